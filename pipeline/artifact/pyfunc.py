"""The logged MLflow model: a pyfunc that takes face images and returns labels + probabilities.

Input: a DataFrame with an ``image`` column and optionally a ``landmark_crop`` column. A cell is
encoded image bytes (JPEG/PNG, as in the shards), a base64 string of such bytes (what the
``mlflow models serve`` JSON carries), or an HWC uint8 array / nested list of aligned-face
pixels (RGB). Without ``landmark_crop`` the crop is the aligned face resized to 112, which is
what ingest stores. The images must be *aligned faces* (``pipeline.faces.align.FaceProcessor`` output,
or the shards' ``image`` column); ``pipeline.predict`` does the detection and alignment for raw
photos — or pass ``params={"detect": True}`` and raw photo bytes: the pyfunc then detects the face
and cuts the model's framing itself (``pipeline.faces.framing.prepare_face``, needs mediapipe; a row
without a face raises naming the row). The decoding is ``pipeline.artifact.infer`` and the
forward ``pipeline.artifact.infer.predict_logits``: the same code evaluation uses, including the
``bgr`` flag of models trained on BGR pixels.

Output: a DataFrame with ``label``, ``label_index`` and one ``prob_<class>`` column per class.

The raw torch weights (``weights.pt``, weights_only-loadable) travel as an artifact, so
``pipeline.artifact.load.load_torch_model`` rebuilds the plain ``nn.Module`` too.

The model is logged as MLflow "models from code": ``python_model`` is the file
``pipeline/artifact/pyfunc_entry.py``, so loading and serving import the project's code instead of
unpickling an object (no ``python_model.pkl``). ``code_paths`` ship ``poster_model`` and only the
``pipeline`` modules the served model can import (``served_modules``: the entry file's imports,
followed statically), never the training, tuning, ingest or registry code.
The preprocessing of a request is ``PosterPyfunc.predict`` below, the one place to change it.
"""
from __future__ import annotations

import ast
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from pipeline.artifact.files import WEIGHTS, load_weights_file, save_weights
from pipeline.artifact.infer import cells_to_uint8, faces_from_photos, images_frame, predict_logits
from pipeline.schema import CROP_SIZE, IMAGE_SIZE

MODEL_CODE = Path(__file__).resolve().parent / "pyfunc_entry.py"  # models-from-code entry file
SERVED_ENTRY = "pipeline.artifact.pyfunc_entry"
PIPELINE_ROOT = MODEL_CODE.parents[1]  # the pipeline package whose modules the model ships
MODEL_NAME = "model"  # the logged model's name inside its run
MODEL_PACKAGE = "poster_model"  # shipped whole: the pure-PyTorch model library
# What the served code imports (torchvision: poster_model's backbones). ``detect=True`` also needs
# the project's ``ingest`` extra (mediapipe, opencv) where the model is served.
_REQUIREMENT_DISTS = ("torch", "torchvision", "numpy", "pillow", "pandas", "pyarrow", "mlflow")


class PosterPyfunc(mlflow.pyfunc.PythonModel):
    """Aligned face images in, labels and class probabilities out."""

    def load_context(self, context: Any) -> None:
        self.model, self.classes, self.extra = load_weights_file(context.artifacts["weights"])

    # ``pd.DataFrame`` is the one hint MLflow 3 neither turns into a signature nor warns about;
    # the explicit signature logged with the model is the contract.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        # The request's preprocessing, all of it: decode/resize the cells, make the crop, then
        # the evaluator's normalisation (predict_logits).
        crops = None
        if (params or {}).get("detect"):  # raw photos: cut the model's framing here
            if getattr(self, "_processor", None) is None:
                from pipeline.faces.align import FaceProcessor

                self._processor = FaceProcessor()
            images, crops = faces_from_photos(model_input["image"], self.extra, self._processor)
        elif isinstance(model_input, pd.DataFrame):
            images = cells_to_uint8(model_input["image"], IMAGE_SIZE)
            if "landmark_crop" in model_input:
                col = model_input["landmark_crop"]
                if not col.isna().any():
                    crops = cells_to_uint8(col, CROP_SIZE)
        else:  # [N,H,W,3] uint8 (reachable through unwrap_python_model(); pyfunc needs a DataFrame)
            images = cells_to_uint8(list(np.asarray(model_input)), IMAGE_SIZE)
            crops = None
        if crops is None:  # the shards' crop is the aligned face resized to 112
            crops = cells_to_uint8(list(images), CROP_SIZE)
        logits = predict_logits(self.model, images, crops, bgr=bool(self.extra.get("bgr", False)),
                                use_crop=bool(self.extra.get("use_crop", True)))
        probs = torch.softmax(logits, 1).numpy()
        idx = probs.argmax(1)
        df = pd.DataFrame({"label": [self.classes[i] for i in idx], "label_index": idx.astype(np.int64)})
        for j, c in enumerate(self.classes):
            df[f"prob_{c}"] = probs[:, j].astype(np.float64)
        return df


def _requirements() -> list[str]:
    from importlib import metadata

    out = []
    for dist in _REQUIREMENT_DISTS:
        try:
            version = metadata.version(dist).split("+")[0]
            out.append(f"{dist}=={version}")
        except metadata.PackageNotFoundError:
            out.append(dist)
    return out


def _module_file(name: str) -> Path | None:
    """``pipeline.a.b`` → its ``.py`` file (``__init__.py`` for a package), None if not a module."""
    rel = PIPELINE_ROOT.joinpath(*name.split(".")[1:])
    for path in (rel / "__init__.py", rel.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _project_imports(name: str, path: Path) -> set[str]:
    """The ``pipeline`` modules ``path`` imports, at module level or inside functions."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package[:len(package) - node.level + 1] if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            # `from a import b`: b may be a submodule or a name defined in a
            found.update(f"{base}.{a.name}" if _module_file(f"{base}.{a.name}") else base for a in node.names)
    return {m for m in found if m.split(".")[0] == "pipeline" and _module_file(m)}


def served_modules(entry: str = SERVED_ENTRY) -> dict[str, Path]:
    """Module name → file of every ``pipeline`` module the served model can import: the entry
    file's imports followed through the package, lazy ones included (a static superset of what
    any request imports), plus the packages above each (importing ``a.b.c`` runs ``a/__init__``,
    ``a/b/__init__``)."""
    seen: dict[str, Path] = {}
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen[name] = path = _module_file(name)
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        todo += sorted((_project_imports(name, path) | parents) - set(seen))
    return seen


def _copy_code(dst: Path) -> list[str]:
    """``poster_model`` whole and the served ``pipeline`` modules, for ``code_paths``."""
    import poster_model

    model_pkg = Path(poster_model.__file__).resolve().parent
    shutil.copytree(model_pkg, dst / MODEL_PACKAGE, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for path in served_modules().values():
        target = dst / "pipeline" / path.relative_to(PIPELINE_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return [str(dst / MODEL_PACKAGE), str(dst / "pipeline")]


def _signature(classes: list[str]) -> Any:
    """image (+ optional landmark_crop) in; label, label_index and one probability per class out."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec(DataType.binary, "image"),
                     ColSpec(DataType.binary, "landmark_crop", required=False)])
    outputs = Schema([ColSpec(DataType.string, "label"), ColSpec(DataType.long, "label_index")]
                     + [ColSpec(DataType.double, f"prob_{c}") for c in classes])
    params = ParamSchema([ParamSpec("detect", DataType.boolean, False)])  # raw photos in `image`
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def _jpeg(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def log_poster_model(tracking_uri: str, run_id: str, state: dict[str, torch.Tensor], poster_cfg: Any,
                     classes: list[str], extra: dict[str, Any] | None = None,
                     example_image: np.ndarray | None = None) -> str:
    """Log the pyfunc into ``run_id``; returns its ``models:/m-…`` URI.

    ``example_image`` (an aligned RGB face, uint8 224×224×3) becomes the input example; a flat
    grey image is used when none is given.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as d:
        wpath = save_weights(Path(d) / WEIGHTS, state, poster_cfg, classes, extra)
        example = example_image if example_image is not None else np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 128, np.uint8)
        example_df = images_frame([_jpeg(np.asarray(example, dtype=np.uint8))])
        probe = PosterPyfunc()  # fail here, not at serving time, if the weights do not load/run
        probe.model, probe.classes, probe.extra = load_weights_file(wpath)
        probe.predict(None, example_df)
        signature = _signature(list(classes))
        code = _copy_code(Path(d) / "code")
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME, python_model=str(MODEL_CODE), artifacts={"weights": str(wpath)},
                code_paths=code, signature=signature, input_example=example_df,
                pip_requirements=_requirements(),
            )
    return info.model_uri
