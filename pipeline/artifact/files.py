"""The two model file formats, both loadable with ``torch.load(weights_only=True)``:

- ``checkpoint.pt``: one per reported training epoch (model, optimizer, scheduler, EMA, RNG, config,
  classes, best weights); written by ``pipeline.train.checkpoint``.
- ``weights.pt``: ``{"model", "poster_config", "classes", "extra"}``, the weights a logged model carries.

A ``PosterConfig`` is built here and only here, from a variant name + overrides or from a saved dict.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

CKPT_FILE = "checkpoint.pt"
WEIGHTS = "weights.pt"


def load_file(path: str | Path) -> dict[str, Any]:
    """Never unpickle arbitrary objects from a checkpoint (official V2 files' pickled recorders are
    replaced by inert placeholders, see ``poster_model.weights.load_weights_only``)."""
    from poster_model.weights import load_weights_only

    return load_weights_only(path)


def poster_config_for(variant: str, overrides: dict[str, Any] | None, num_classes: int) -> Any:
    """The variant's ``PosterConfig`` with ``model.overrides`` applied (YAML lists → tuples)."""
    import poster_model

    base = poster_model.variant_config(variant, num_classes=num_classes)
    try:
        over = base.fields_from(overrides or {}, strict=True)
    except ValueError as e:
        raise ValueError(f"model.overrides: {e}") from None
    return dataclasses.replace(base, **over)


def poster_config_from_dict(d: dict[str, Any]) -> Any:
    """A ``PosterConfig`` from a saved dict (lists back to tuples, unknown keys dropped)."""
    import poster_model

    return poster_model.PosterConfig.from_dict(d)


def save_weights(path: str | Path, state: dict[str, torch.Tensor], poster_cfg: Any,
                 classes: list[str], extra: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    cfg = poster_cfg if isinstance(poster_cfg, dict) else dataclasses.asdict(poster_cfg)
    torch.save({"model": state, "poster_config": cfg,
                "classes": list(classes), "extra": extra or {}}, path)
    return path


def load_weights_file(path: str | Path) -> tuple[torch.nn.Module, list[str], dict[str, Any]]:
    """``weights.pt`` → (eval-mode model, classes, extra); never unpickles objects."""
    import poster_model

    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = poster_model.build_poster(poster_config_from_dict(blob["poster_config"]))
    model.load_state_dict(blob["model"])
    return model.eval(), list(blob["classes"]), dict(blob.get("extra", {}))
