"""The logged MLflow model: a pyfunc that takes face images and returns labels + probabilities.

Input: a DataFrame with an ``image`` column (encoded bytes or HWC uint8 arrays of aligned faces,
as in the shards) and optionally ``landmark_crop``; or an ndarray [N,H,W,3] uint8. The
preprocessing is ``pipeline.transforms`` — the same code evaluation uses. The raw torch weights
(``weights.pt``, weights_only-loadable) travel as an artifact, so ``load_torch_model`` rebuilds
the plain ``nn.Module`` too.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "weights.pt"


def save_weights(path: str | Path, state: dict[str, torch.Tensor], poster_cfg: Any,
                 classes: list[str], extra: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    torch.save({"model": state, "poster_config": dataclasses.asdict(poster_cfg),
                "classes": list(classes), "extra": extra or {}}, path)
    return path


def load_weights_file(path: str | Path) -> tuple[torch.nn.Module, list[str], dict[str, Any]]:
    """``weights.pt`` → (eval-mode model, classes, extra); never unpickles objects."""
    import poster_model

    blob = torch.load(path, map_location="cpu", weights_only=True)
    fields = {f.name for f in dataclasses.fields(poster_model.PosterConfig)}
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in blob["poster_config"].items() if k in fields}
    model = poster_model.build_poster(poster_model.PosterConfig(**kw))
    model.load_state_dict(blob["model"])
    return model.eval(), list(blob["classes"]), dict(blob.get("extra", {}))


def _to_uint8(items: Any, size: int) -> np.ndarray:
    from pipeline.transforms import decode_image

    out = []
    for x in items:
        if isinstance(x, (bytes, bytearray, memoryview)):
            out.append(decode_image(bytes(x), size))
        else:
            from PIL import Image

            arr = np.asarray(x, dtype=np.uint8)
            if arr.shape[:2] != (size, size):
                arr = np.asarray(Image.fromarray(arr).convert("RGB").resize((size, size), Image.BILINEAR))
            out.append(arr)
    return np.stack(out)


class PosterPyfunc(mlflow.pyfunc.PythonModel):
    """Face images in, labels and class probabilities out."""

    def load_context(self, context: Any) -> None:
        self.model, self.classes, self.extra = load_weights_file(context.artifacts["weights"])

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd

        from pipeline.evaluation import predict_logits
        from pipeline.transforms import CROP_SIZE, IMAGE_SIZE

        if isinstance(model_input, pd.DataFrame):
            images = _to_uint8(model_input["image"], IMAGE_SIZE)
            crops = (_to_uint8(model_input["landmark_crop"], CROP_SIZE)
                     if "landmark_crop" in model_input else None)
        else:
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


def log_poster_model(tracking_uri: str, run_id: str, state: dict[str, torch.Tensor], poster_cfg: Any,
                     classes: list[str], extra: dict[str, Any] | None = None,
                     example_image: np.ndarray | None = None) -> str:
    """Log the pyfunc into ``run_id``; returns its ``models:/m-…`` URI."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as d:
        wpath = save_weights(Path(d) / WEIGHTS, state, poster_cfg, classes, extra)
        example = example_image if example_image is not None else np.full((224, 224, 3), 128, np.uint8)
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(example).save(buf, format="JPEG")
        example_df = pd.DataFrame({"image": [buf.getvalue()]})
        probe = PosterPyfunc()
        probe.model, probe.classes, probe.extra = load_weights_file(wpath)
        signature = infer_signature(example_df, probe.predict(None, example_df))
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=PosterPyfunc(), artifacts={"weights": str(wpath)},
                code_paths=[str(REPO / "poster_model"), str(REPO / "pipeline")],
                signature=signature, input_example=example_df,
                pip_requirements=["torch", "numpy", "pillow", "pandas"],
            )
    return info.model_uri


def load_torch_model(model_uri: str, tracking_uri: str | None = None) -> tuple[torch.nn.Module, list[str], dict[str, Any]]:
    """The plain nn.Module behind a logged pyfunc (``models:/poster-fer@champion`` etc.)."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as d:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=d)
        found = list(Path(local).rglob(WEIGHTS))
        if not found:
            raise FileNotFoundError(f"{model_uri} has no {WEIGHTS}: not a poster-ray model")
        return load_weights_file(found[0])
