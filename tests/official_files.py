"""Official-format checkpoint files built from fresh models (tests only): the layout of the
authors' ``rafdb_best.pth`` (V1) and POSTER V2 ``main.py`` files, without their weights."""
from __future__ import annotations

from pathlib import Path

import torch


# Shapes of the official V1 entries the project model does not build (module-level names;
# ../shared/reference/manifests/poster_v1_*_checkpoint.json): IR-50's dead output layer
# (BN2d(512), Linear(25088->512), BN1d(512)) and the never-used pyramid cls_token.
_DEAD_SHAPES = {
    "ir_back.output_layer.0": (512,), "ir_back.output_layer.4": (512,),
    "ir_back.output_layer.3.weight": (512, 25088), "ir_back.output_layer.3.bias": (512,),
    "pyramid_fuse.cls_token": (1, 1, 512),
}


def _dead_entry(key: str) -> torch.Tensor:
    if key.endswith("num_batches_tracked"):
        return torch.tensor(0, dtype=torch.int64)
    shape = _DEAD_SHAPES.get(key) or _DEAD_SHAPES.get(key.rsplit(".", 1)[0], (1,))
    return torch.zeros(shape) if not key.endswith(("running_var", "weight")) or len(shape) > 1 else torch.ones(shape)


def make_synthetic_official(path: str | Path, variant: str = "small", num_classes: int = 7,
                            seed: int = 0) -> Path:
    """A ``rafdb_best.pth``-format file from a freshly built model (``variant="v2"``: a V2 file).

    The layout is the official one: ``module.``-prefixed keys under ``model_state_dict`` (every
    entry of the official file, including the dead ones ``poster_model.weights.V1_UNUSED_KEYS``
    lists, which the strict loader tolerates) plus ``iter`` and ``optimizer_state_dict``.
    """
    if variant == "v2":
        return make_synthetic_official_v2(path, num_classes, seed)
    import poster_model
    from poster_model.weights import V1_UNUSED_KEYS

    torch.manual_seed(seed)
    model = poster_model.build_poster(poster_model.variant_config(variant, num_classes))
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    for key in sorted(V1_UNUSED_KEYS):
        state.setdefault(f"module.{key}", _dead_entry(key))
    path = Path(path)
    torch.save({"iter": 216, "model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}},
               path)
    return path


def make_synthetic_official_v2(path: str | Path, num_classes: int = 7, seed: int = 0) -> Path:
    """A POSTER V2 ``main.py``-format file from a freshly built faithful model (all 747 official
    entries, dead modules included): ``{'epoch', 'state_dict' (module.), 'best_acc', 'optimizer'}``.
    The official file also pickles two recorder objects; they are left out here."""
    import poster_model

    torch.manual_seed(seed)
    model = poster_model.poster_v2(num_classes, official_dead_modules=True)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = Path(path)
    torch.save({"epoch": 199, "state_dict": state, "best_acc": torch.tensor([92.21]),
                "optimizer": {"state": {}, "param_groups": []}}, path)
    return path
