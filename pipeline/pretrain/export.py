"""The pretrained file and its MLflow life: saved in the official layout, logged as a model,
registered under the task's name with an alias a training config can name."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from pipeline.tracking import with_retry

ENTRY = Path(__file__).resolve().parent / "landmark_pyfunc.py"
POSTER_MODEL = Path(__file__).resolve().parents[2] / "poster_model"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_weights_file(state: dict[str, torch.Tensor], path: Path, meta: dict[str, Any]) -> str:
    """``{"state_dict": ..., "meta": ...}`` (what ``poster_model.weights.read_state_dict`` unwraps,
    like the official file); returns the file's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "meta": {k: (v if isinstance(v, (int, float, str)) else str(v))
                                              for k, v in meta.items()}}, path)
    return file_sha256(path)


def log_and_register(cfg: Any, task: Any, uri: str, run_id: str, weights: Path,
                     metrics: dict[str, float]) -> tuple[str, str | None]:
    """Log the weights as the run's model; register it (``register.*``). Returns (URI, version):
    ``models:/NAME@ALIAS`` when registered, else the logged model's URI."""
    import mlflow

    from pipeline.registry.names import client_for, global_uri

    with global_uri(uri), mlflow.start_run(run_id=run_id):
        info = with_retry(lambda: mlflow.pyfunc.log_model(
            name=task.name, python_model=str(ENTRY), artifacts={"weights": str(weights)},
            code_paths=[str(POSTER_MODEL)], pip_requirements=["torch", "numpy", "pillow", "pandas", "mlflow"]),
            f"log the {task.name} model to run {run_id}")
    if not cfg.register.enabled:
        return info.model_uri, None
    name = cfg.register.name or task.registered_name
    client = client_for(uri)
    with global_uri(uri):
        mv = mlflow.register_model(info.model_uri, name, tags={"poster.pretrain_task": task.name})
    desc = (f"POSTER {task.name} pretraining (pipeline.pretrain): held-out "
            + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            + f". Use in training: model.mobilefacenet_weights=models:/{name}@{cfg.register.alias or mv.version}")
    client.update_model_version(name, mv.version, description=desc)
    for k, v in metrics.items():
        client.set_model_version_tag(name, mv.version, f"heldout_{k}", f"{v:.6g}")
    if cfg.register.alias:
        client.set_registered_model_alias(name, cfg.register.alias, mv.version)
        return f"models:/{name}@{cfg.register.alias}", str(mv.version)
    return f"models:/{name}/{mv.version}", str(mv.version)
