"""The logged MLflow model: a pyfunc that takes face images and returns labels + probabilities.

Input: a DataFrame with an ``image`` column and optionally a ``landmark_crop`` column. A cell is
encoded image bytes (JPEG/PNG, as in the shards), a base64 string of such bytes (what the
``mlflow models serve`` JSON carries), or an HWC uint8 array / nested list of aligned-face
pixels (RGB). Without ``landmark_crop`` the crop is the aligned face resized to 112, which is
what ingest stores. The images must be *aligned faces* (``pipeline.faces.align.FaceProcessor`` output,
or the shards' ``image`` column); ``pipeline.predict`` does the detection and alignment for raw
photos — or pass ``params={"detect": True}`` and raw photo bytes: the pyfunc then detects the face
and cuts the model's framing itself (``pipeline.faces.framing.prepare_face``, needs mediapipe; a row
without a face raises naming the row). The preprocessing is ``pipeline.transforms`` +
``pipeline.artifact.infer.predict_logits`` —
the same code evaluation uses, including the ``bgr`` flag of models trained on BGR pixels.

Output: a DataFrame with ``label``, ``label_index`` and one ``prob_<class>`` column per class.

The raw torch weights (``weights.pt``, weights_only-loadable) travel as an artifact, so
``load_torch_model`` rebuilds the plain ``nn.Module`` too.

The model is logged as MLflow "models from code": ``python_model`` is the file
``pipeline/pyfunc_model.py`` and ``code_paths`` ship ``pipeline`` + ``poster_model``, so loading
and serving import the project's code instead of unpickling an object (no ``python_model.pkl``).
The preprocessing of a request is ``PosterPyfunc.predict`` below, the one place to change it.
"""
from __future__ import annotations

import base64
import binascii
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch

from pipeline.artifact.files import WEIGHTS, load_weights_file, save_weights  # noqa: F401

MODEL_CODE = Path(__file__).resolve().parent / "pyfunc_model.py"  # models-from-code entry file
MODEL_NAME = "model"  # the logged model's name inside its run
CODE_PACKAGES = ("poster_model", "pipeline")
_REQUIREMENT_DISTS = ("torch", "numpy", "pillow", "pandas", "pyarrow", "pyyaml", "mlflow")


def _cell_to_uint8(x: Any, size: int) -> np.ndarray:
    from PIL import Image

    from pipeline.transforms import decode_image

    if isinstance(x, str):  # base64 text, e.g. from a JSON request that skipped schema decoding
        try:
            x = base64.b64decode(x, validate=False)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"image string is not base64: {e}") from None
    if isinstance(x, (bytes, bytearray, memoryview)):
        if not size:  # a raw photo: native size
            with Image.open(io.BytesIO(bytes(x))) as im:
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
        return decode_image(bytes(x), size)
    arr = np.asarray(x)
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError("pixel arrays must be uint8 (0..255)")
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {arr.shape}")
    if arr.shape[2] != 3:
        arr = np.asarray(Image.fromarray(arr.squeeze(-1) if arr.shape[2] == 1 else arr).convert("RGB"))
    if size and arr.shape[:2] != (size, size):
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))
    return np.ascontiguousarray(arr)


def faces_from_photos(cells: Any, extra: dict[str, Any], processor: Any) -> tuple[np.ndarray, np.ndarray]:
    """Raw photo cells → (aligned images, crops) in the model's framing (``params.detect``)."""
    from pipeline.faces.align import NoFaceError
    from pipeline.faces.framing import of_extra, prepare_face, resolve_for_predict

    framing = resolve_for_predict(of_extra(extra))
    faces = []
    for i, x in enumerate(cells):
        rgb = _cell_to_uint8(x, 0)
        try:
            faces.append(prepare_face(rgb, framing, processor))
        except NoFaceError as e:
            raise ValueError(f"row {i}: no face found ({e}); send a photo with one visible face") from None
    return np.stack([f.image for f in faces]), np.stack([f.crop for f in faces])


def _to_uint8(items: Any, size: int) -> np.ndarray:
    return np.stack([_cell_to_uint8(x, size) for x in items])


def images_frame(images: Any, crops: Any | None = None) -> pd.DataFrame:
    """A pyfunc input DataFrame from a list/array of images (bytes or HWC uint8) and crops."""
    data = {"image": list(images)}
    if crops is not None:
        data["landmark_crop"] = list(crops)
    return pd.DataFrame(data)


class PosterPyfunc(mlflow.pyfunc.PythonModel):
    """Aligned face images in, labels and class probabilities out."""

    def load_context(self, context: Any) -> None:
        self.model, self.classes, self.extra = load_weights_file(context.artifacts["weights"])

    # ``pd.DataFrame`` is the one hint MLflow 3 neither turns into a signature nor warns about;
    # the explicit signature logged with the model is the contract.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        # The request's preprocessing, all of it: decode/resize the cells, make the crop, then
        # the evaluator's normalisation (predict_logits).
        from pipeline.artifact.infer import predict_logits
        from pipeline.transforms import CROP_SIZE, IMAGE_SIZE

        crops = None
        if (params or {}).get("detect"):  # raw photos: cut the model's framing here
            if getattr(self, "_processor", None) is None:
                from pipeline.faces.align import FaceProcessor

                self._processor = FaceProcessor()
            images, crops = faces_from_photos(model_input["image"], self.extra, self._processor)
        elif isinstance(model_input, pd.DataFrame):
            images = _to_uint8(model_input["image"], IMAGE_SIZE)
            if "landmark_crop" in model_input:
                col = model_input["landmark_crop"]
                if not col.isna().any():
                    crops = _to_uint8(col, CROP_SIZE)
        else:  # [N,H,W,3] uint8 (reachable through unwrap_python_model(); pyfunc needs a DataFrame)
            images = _to_uint8(list(np.asarray(model_input)), IMAGE_SIZE)
            crops = None
        if crops is None:  # the shards' crop is the aligned face resized to 112
            crops = _to_uint8(list(images), CROP_SIZE)
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


def _copy_code(dst: Path) -> list[str]:
    """The project packages, without caches, for ``code_paths``."""
    from pipeline.config import REPO_ROOT  # logging side only: the served model never imports config

    paths = []
    for pkg in CODE_PACKAGES:
        target = dst / pkg
        shutil.copytree(REPO_ROOT / pkg, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        paths.append(str(target))
    return paths


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
        example = example_image if example_image is not None else np.full((224, 224, 3), 128, np.uint8)
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


def resolve_model_uri(model_uri: str, tracking_uri: str | None = None) -> str:
    """``models:/NAME/VERSION[/path]``, ``models:/NAME@ALIAS[/path]`` or ``models:/m-…[/path]`` →
    the artifact location it names, looked up in ``tracking_uri``'s registry.

    MLflow 3.17's ``download_artifacts(registry_uri=…)`` resolves ``models:/`` URIs with the
    *global* registry URI (``ModelsArtifactRepository._get_model_uri_infos``), so code that passes
    its store explicitly resolves the URI itself. Other URIs are returned unchanged.
    """
    if not tracking_uri or not model_uri.startswith("models:/"):
        return model_uri
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    base, sub = ModelsArtifactRepository.split_models_uri(model_uri)
    body = base[len("models:/"):].strip("/")
    if "@" in body:
        name, alias = body.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
        location = client.get_model_version_download_uri(name, version)
    elif "/" in body:
        name, version = body.split("/", 1)
        location = client.get_model_version_download_uri(name, version)
    else:
        location = client.get_logged_model(body).artifact_location
    return location.rstrip("/") + (f"/{sub}" if sub else "")


def load_torch_model(model_uri: str, tracking_uri: str | None = None) -> tuple[torch.nn.Module, list[str], dict[str, Any]]:
    """The plain nn.Module behind a logged pyfunc (``models:/poster-fer@champion`` etc.).

    ``tracking_uri`` (also the registry URI) is used per call, never set globally; without it
    MLflow's current URIs apply. Only ``weights.pt`` is downloaded.
    """
    import mlflow

    uri = resolve_model_uri(model_uri, tracking_uri)
    kw = {"tracking_uri": tracking_uri} if tracking_uri else {}
    with tempfile.TemporaryDirectory() as d:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{uri.rstrip('/')}/artifacts/{WEIGHTS}", dst_path=d, **kw)
        except Exception:  # other layouts: fetch the whole model and look for the file
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=d, **kw)
        found = [Path(local)] if Path(local).is_file() else list(Path(local).rglob(WEIGHTS))
        if not found:
            raise FileNotFoundError(f"{model_uri} has no {WEIGHTS}: not a poster-ray model")
        return load_weights_file(found[0])
