"""Registered-model fixtures that need no training: a logged POSTER-tiny whose head always answers
one class. A review against it is decided by the other model alone, so the registry and integrity
tests get a sure loser (or a sure winner on rows of that class) in about a second, not a Ray
Train fit (~40 s on 2 cores)."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def constant_model_run(uri: str, manifest: dict, favour: int, experiment: str = "poster-fer/race") -> str:
    """A POSTER-tiny whose head always answers class ``favour``, logged into a new FINISHED run of
    ``experiment`` with the tags a training run leaves (classes, variant, dataset hash)."""
    import torch
    from mlflow.tracking import MlflowClient

    from pipeline.artifact.pyfunc import log_poster_model
    from pipeline.config import load_config
    from pipeline.tracking import ensure_experiment
    from pipeline.train.builders import build_model, poster_config

    classes = list(manifest["classes"])
    cfg = load_config(REPO / "configs" / "smoke.yaml")
    model = build_model(cfg.model, len(classes), load_weights=False)
    state = model.state_dict()
    head = [k for k, v in state.items() if k.endswith("weight") and v.ndim == 2 and v.shape[0] == len(classes)][-1]
    state[head] = torch.zeros_like(state[head])
    bias = head[: -len("weight")] + "bias"
    state[bias] = torch.full_like(state[bias], -10.0)
    state[bias][favour] = 10.0
    client = MlflowClient(uri)
    exp = ensure_experiment(uri, experiment)
    run_id = client.create_run(exp, tags={"poster.classes": ",".join(classes), "poster.variant": "tiny",
                                          "poster.dataset_hash": manifest["content_hash"]}).info.run_id
    log_poster_model(uri, run_id, state, poster_config(cfg.model, len(classes)), classes,
                     {"bgr": False, "use_crop": True, "variant": "tiny"})
    client.set_terminated(run_id, "FINISHED")
    return run_id
