"""Classify the facial expression in photos: detect, align, crop, run the model.

    python -m pipeline.predict IMAGE [IMAGE ...] [--model models:/poster-fer@champion]
        [--tracking-uri URI] [--json] [--save-aligned DIR]
    python -m pipeline.predict --input-dir DIR | --shards DIR [--split S] --out preds.parquet
        [--batch-size 16] [--actors 2] [--cpus-per-actor 0.5]      (Ray Data, pipeline.batch_predict)

Each image goes through ``pipeline.faces.framing.prepare_face``: the detector ingest uses, then the cut of
the *model's framing* (recorded in the model; ``--framing`` overrides it, and a framing without a
detector recipe falls back to the project framing with a ``FramingWarning``). The model runs
on the aligned 224 face and its 112 landmark crop with the evaluation
preprocessing (``pipeline.evaluation.predict_logits``, honouring the model's ``bgr`` flag). The
model is anything ``pipeline.evaluate`` loads: a ``models:/`` URI, a training checkpoint, a
``weights.pt`` or (with ``--variant/--dataset``) an official checkpoint.

One line per image (label, then every class probability), or a JSON list with ``--json``. An
unreadable file, a file that is not an image, or an image without a detectable face gets an
error entry and the others are still answered. Exit codes: 0 when at least one image was
answered, 1 when none could be, 2 when the model could not be loaded.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL = "models:/poster-fer@champion"


@dataclass
class Prediction:
    path: str
    ok: bool
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # unreadable | not_an_image | no_face, then ': detail'
    landmarks_from: str | None = None
    framing: str | None = None  # the framing the face was cut in


def read_rgb(path: str | Path) -> np.ndarray:
    """A photo file → RGB uint8 HWC, EXIF orientation applied. Raises OSError / ValueError."""
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    data = Path(path).read_bytes()  # OSError: missing, permissions, a directory
    if not data:
        raise ValueError("empty file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:  # truncated/corrupt data
        raise ValueError(f"not a readable image ({e})") from None


def preprocess_image(path: str, processor: Any, framing: Any = None) -> tuple[Prediction, Any]:
    """One photo → (Prediction stub, FaceResult or None): read, detect, cut `framing` (default: the
    project's).

    The per-image preprocessing of every predict mode (few files here, ``pipeline.batch_predict``
    in Ray Data actors); a failure becomes the stub's ``error`` (unreadable / not_an_image /
    no_face / processing_error), never an exception.
    """
    from pipeline.faces.align import NoFaceError
    from pipeline.faces.framing import get, prepare_face

    framing = get(framing)
    try:
        rgb = read_rgb(path)
    except OSError as e:
        return Prediction(path, False, error=f"unreadable: {e.strerror or e}"), None
    except ValueError as e:
        return Prediction(path, False, error=f"not_an_image: {e}"), None
    try:
        face = prepare_face(rgb, framing, processor)
    except NoFaceError as e:
        return Prediction(path, False, error=f"no_face: {e}"), None
    except Exception as e:  # a detector failure on one image must not sink the others
        return Prediction(path, False, error=f"processing_error: {type(e).__name__}: {e}"), None
    return Prediction(path, True, landmarks_from=face.landmarks_from, framing=framing.name), face


def prepare(paths: list[str], processor: Any, framing: Any = None) -> tuple[list[Prediction], list[Any]]:
    """Face-process every path in `framing`: a Prediction stub per path, and the FaceResult (or
    None) per path."""
    pairs = [preprocess_image(p, processor, framing) for p in paths]
    return [p for p, _ in pairs], [f for _, f in pairs]


def classify(loaded: Any, preds: list[Prediction], faces: list[Any], batch_size: int = 32) -> list[Prediction]:
    """Fill label and probabilities of the stubs that have a face."""
    import torch

    from pipeline.evaluation import predict_logits

    idx = [i for i, f in enumerate(faces) if f is not None]
    for s in range(0, len(idx), batch_size):
        chunk = idx[s:s + batch_size]
        images = np.stack([faces[i].image for i in chunk])
        crops = np.stack([faces[i].crop for i in chunk])
        probs = torch.softmax(predict_logits(loaded.model, images, crops, bgr=loaded.bgr,
                                             use_crop=loaded.use_crop), 1).numpy()
        for i, pr in zip(chunk, probs):
            preds[i].label = loaded.classes[int(pr.argmax())]
            preds[i].probabilities = {c: float(v) for c, v in zip(loaded.classes, pr)}
    return preds


def predict_files(paths: list[str], model: str = DEFAULT_MODEL, tracking_uri: str | None = None,
                  loaded: Any = None, processor: Any = None, framing: str | None = None,
                  **load_kw: Any) -> list[Prediction]:
    """Python API: the same as the CLI, returning one Prediction per path (in order).

    Faces are cut in the model's framing (`framing` overrides it; see ``resolve_for_predict``).
    """
    from pipeline.evaluate import load_model
    from pipeline.faces.align import FaceProcessor
    from pipeline.faces.framing import resolve_for_predict

    loaded = loaded or load_model(model, tracking_uri, **load_kw)
    use = resolve_for_predict(loaded.framing, framing)
    own = processor is None
    processor = processor or FaceProcessor()
    try:
        preds, faces = prepare(paths, processor, use)
    finally:
        if own:
            processor.close()
    return classify(loaded, preds, faces)


def format_line(p: Prediction) -> str:
    if not p.ok:
        return f"{p.path}: ERROR {p.error}"
    probs = "  ".join(f"{c} {v:.3f}" for c, v in p.probabilities.items())
    return f"{p.path}: {p.label} ({p.probabilities[p.label]:.3f})   [{probs}]"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="*", help="image files (JPEG, PNG, …)")
    batch = ap.add_argument_group("batch prediction with Ray Data (pipeline.batch_predict)")
    src = batch.add_mutually_exclusive_group()
    src.add_argument("--input-dir", help="every image file under DIR (recursively)")
    src.add_argument("--shards", help="shard root (pipeline.ingest output); rows are aligned faces")
    batch.add_argument("--split", default="test", help="shard split (default test)")
    batch.add_argument("--out", help="output Parquet file, one row per input")
    batch.add_argument("--batch-size", type=int, default=16, help="images per actor call")
    batch.add_argument("--actors", type=int, default=2, help="model actors in the pool")
    batch.add_argument("--cpus-per-actor", type=float, default=0.5, help="CPUs reserved per actor (fractional ok)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"model to use (default {DEFAULT_MODEL})")
    ap.add_argument("--tracking-uri", help="MLflow URI for models:/ (default $MLFLOW_TRACKING_URI or runs/mlflow.db)")
    ap.add_argument("--json", action="store_true", help="print a JSON list instead of text lines")
    ap.add_argument("--save-aligned", metavar="DIR", help="also write each aligned face (for inspection)")
    ap.add_argument("--framing", help="cut faces in this named framing instead of the model's "
                                      "(project, rafdb-aligned, affectnet-crop)")
    ap.add_argument("--variant", default="large", help="official checkpoints only")
    ap.add_argument("--dataset", default="rafdb", help="official checkpoints only")
    args = ap.parse_args(argv)
    batch_mode = bool(args.input_dir or args.shards)
    if batch_mode and (args.images or not args.out):
        ap.error("--input-dir/--shards take no IMAGE arguments and need --out FILE.parquet")
    if not batch_mode and not args.images:
        ap.error("give IMAGE files, or --input-dir/--shards with --out")
    return args


def main(argv: list[str] | None = None) -> int:
    import warnings

    from pipeline.evaluate import load_model, quiet_mlflow
    from pipeline.faces.align import FaceProcessor
    from pipeline.faces.framing import FramingError, resolve_for_predict

    args = parse_args(argv)
    quiet_mlflow()
    try:
        loaded = load_model(args.model, args.tracking_uri, args.variant, args.dataset)
    except Exception as e:  # registry unreachable, alias missing, file absent: nothing can be answered
        print(f"error: cannot load model {args.model}: {e}", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            framing = resolve_for_predict(loaded.framing, args.framing)
    except FramingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.input_dir or args.shards:
        from pipeline.batch_predict import run_batch

        report = run_batch(loaded, args.out, input_dir=args.input_dir, shards=args.shards, split=args.split,
                           batch_size=args.batch_size, actors=args.actors, cpus_per_actor=args.cpus_per_actor,
                           framing=framing)
        return 0 if report.predicted and report.reconciled else 1
    processor = FaceProcessor()
    try:
        preds, faces = prepare(args.images, processor, framing)
    finally:
        processor.close()
    classify(loaded, preds, faces)
    if args.save_aligned:
        from PIL import Image

        out = Path(args.save_aligned)
        out.mkdir(parents=True, exist_ok=True)
        for p, f in zip(preds, faces):
            if f is not None:
                Image.fromarray(f.image).save(out / (Path(p.path).stem + "_aligned.png"))
    if args.json:
        print(json.dumps([asdict(p) for p in preds], indent=2))
    else:
        for p in preds:
            print(format_line(p))
    answered = sum(p.ok for p in preds)
    if answered < len(preds):
        print(f"{len(preds) - answered} of {len(preds)} image(s) could not be answered", file=sys.stderr)
    return 0 if answered else 1


if __name__ == "__main__":
    from pipeline.cli import run_cli

    sys.exit(run_cli(main))
