"""Official POSTER V1 and V2 checkpoints as project models.

The official V1 file (``rafdb_best.pth``) is ``{'iter', 'model_state_dict' (``module.``-prefixed),
'optimizer_state_dict'}``; the V2 one (``main.py``) is ``{'epoch', 'state_dict' (``module.``-prefixed),
'best_acc', 'optimizer', 'recorder1', 'recorder'}``. ``poster_model.load_official_checkpoint`` turns
either into a model (``Poster`` / ``PosterV2``). This module adds what the
file does not say (docs/poster_spec.md §3–4):

- the label order of the dataset it was trained on — RAF-DB's official index order is
  surprise, fear, disgust, happy, sad, anger, neutral — and re-orders the classifier rows into the
  project's class order, so an imported model's ``label_index`` means the same as a trained one's;
- the colour order: the official V1 RAF-DB model was trained and tested on BGR pixels (``bgr=True``
  in the model's ``extra``), the AffectNet ones and every V2 model on RGB;
- the landmark crop: the official forward derives it from the image by a nearest resize
  (``use_crop=False``), not from the ingest's area-resized crop.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from pipeline.schema import CANONICAL_CLASSES

# Index order of the official label files (docs/poster_spec.md §4).
OFFICIAL_CLASS_ORDER: dict[str, tuple[str, ...]] = {
    "rafdb": ("surprise", "fear", "disgust", "happy", "sad", "anger", "neutral"),
    "affectnet": ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"),
    "affectnet7": ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"),
    "affectnet8": ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"),
}
TRAINED_ON_BGR = {"rafdb": True}


def official_framing(dataset: str):
    """The framing of the images an official checkpoint was trained on (RAF-DB aligned, AffectNet crops)."""
    from pipeline.faces import framing as FR

    return FR.AFFECTNET_CROP if dataset.startswith("affectnet") else FR.RAFDB_ALIGNED


def default_class_order(dataset: str) -> list[str]:
    """The project's order for a dataset's classes: canonical vocabulary order."""
    names = set(official_order(dataset))
    return [c for c in CANONICAL_CLASSES if c in names]


def official_order(dataset: str) -> tuple[str, ...]:
    key = dataset.lower().replace("-", "").replace("_", "")
    if key not in OFFICIAL_CLASS_ORDER:
        raise ValueError(f"unknown official dataset {dataset!r}; choose from {sorted(OFFICIAL_CLASS_ORDER)}")
    return OFFICIAL_CLASS_ORDER[key]


def is_official_checkpoint(blob: Any) -> bool:
    return isinstance(blob, dict) and ("model_state_dict" in blob or official_family(blob) == "v2")


def official_family(blob: Any) -> str:
    """'v2' for a POSTER V2 ``main.py`` container (``state_dict`` with ``module.VIT.*`` keys), else 'v1'."""
    state = blob.get("state_dict") if isinstance(blob, dict) else None
    if isinstance(state, dict) and any(str(k).startswith(("module.VIT.", "VIT.")) for k in state):
        return "v2"
    return "v1"


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def reorder_head(model: torch.nn.Module, source: list[str] | tuple[str, ...], target: list[str]) -> None:
    """Permute the classifier rows in place so output ``j`` is class ``target[j]``."""
    if sorted(source) != sorted(target):
        raise ValueError(f"class sets differ: checkpoint {list(source)} vs requested {list(target)}")
    perm = torch.tensor([list(source).index(c) for c in target])
    linear = model.head.linear
    with torch.no_grad():
        linear.weight.copy_(linear.weight[perm].clone())
        linear.bias.copy_(linear.bias[perm].clone())


def load_official(path: str | Path, variant: str = "large", dataset: str = "rafdb",
                  classes: list[str] | None = None) -> tuple[torch.nn.Module, list[str], dict[str, Any]]:
    """(eval model with its head in ``classes`` order, classes, extra for the pyfunc)."""
    import poster_model

    source = official_order(dataset)
    target = list(classes) if classes else default_class_order(dataset)
    # V2's head is always 7-wide in the 7-class files (VisionTransformer ignores num_classes)
    model = poster_model.load_official_checkpoint(str(path), variant=variant, num_classes=len(source))
    reorder_head(model, source, target)
    key = dataset.lower().replace("-", "").replace("_", "")
    extra = {
        # only V1's RAF-DB script skipped BGR->RGB; V2 reads every dataset with PIL (RGB)
        "bgr": TRAINED_ON_BGR.get(key, False) and variant != "v2",
        "use_crop": False,  # official forward: nearest resize of the image gives the landmark input
        "variant": variant,
        "source": "official",
        "dataset": key,
        "official_class_order": list(source),
        "framing": official_framing(key).to_dict(),
    }
    return model.eval(), target, extra


# Shapes of the official V1 entries the project model does not build (module-level names;
# /work/shared/reference/manifests/poster_v1_*_checkpoint.json): IR-50's dead output layer
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
    if variant == "v2":
        return make_synthetic_official_v2(path, num_classes, seed)
    """A ``rafdb_best.pth``-format file from a freshly built model (for tests and demos).

    The layout is the official one: ``module.``-prefixed keys under ``model_state_dict`` (every
    entry of the official file, including the dead ones ``poster_model.weights.V1_UNUSED_KEYS``
    lists, which the strict loader tolerates) plus ``iter`` and ``optimizer_state_dict``.
    """
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
