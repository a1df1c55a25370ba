"""Classify the facial expression in photos: detect, align, crop, run the model.

    python -m pipeline.predict IMAGE [IMAGE ...] [--model models:/poster-fer@champion]
        [--tracking-uri URI] [--json] [--save-aligned DIR]
    python -m pipeline.predict --input-dir DIR | --shards DIR [--split S] --out preds.parquet
        [--batch-size 16] [--actors 2] [--cpus-per-actor 0.5]      (Ray Data, pipeline.predict.batch)

Each image goes through ``pipeline.faces.framing.prepare_face``: the detector ingest uses, then the cut of
the *model's framing* (recorded in the model; ``--framing`` overrides it, and a framing without a
detector recipe falls back to the project framing with a ``FramingWarning``). The model runs
on the aligned 224 face and its 112 landmark crop with the evaluation
preprocessing (``pipeline.artifact.infer.predict_logits``, honouring the model's ``bgr`` flag). The
model is anything ``pipeline.evaluate`` loads: a ``models:/`` URI, a training checkpoint, a
``weights.pt`` or (with ``--variant/--dataset``) an official checkpoint.

One line per image (label, then every class probability), or a JSON list with ``--json``. An
unreadable file, a file that is not an image, or an image without a detectable face gets an
error entry and the others are still answered. Exit codes: 0 when at least one image was
answered, 1 when none could be, 2 when the model could not be loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.registry.names import CHAMPION, DEFAULT_NAME

DEFAULT_MODEL = f"models:/{DEFAULT_NAME}@{CHAMPION}"


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

    from pipeline.storage import is_uri, read_bytes

    # OSError: missing, permissions, a directory; s3://... through pyarrow (AWS_* variables)
    data = read_bytes(str(path)) if is_uri(str(path)) else Path(path).read_bytes()
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

    The per-image preprocessing of every predict mode (few files here, ``pipeline.predict.batch``
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

    from pipeline.artifact.infer import predict_logits

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
    from pipeline.artifact.load import load_model
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
