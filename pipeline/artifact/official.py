"""Official POSTER V1 and V2 checkpoints as project models.

The official V1 file (``rafdb_best.pth``) is ``{'iter', 'model_state_dict' (``module.``-prefixed),
'optimizer_state_dict'}``; the V2 one (``main.py``) is ``{'epoch', 'state_dict' (``module.``-prefixed),
'best_acc', 'optimizer', 'recorder1', 'recorder'}``. ``poster_model.load_official_checkpoint`` turns
either into a model (``Poster`` / ``PosterV2``). This module adds what the
file does not say (../shared/docs/poster_spec.md §3–4):

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

from pipeline.schema import AFFECTNET_ORDER, CANONICAL_CLASSES, RAFDB_ORDER

# Index order of the official label files (../shared/docs/poster_spec.md §4).
OFFICIAL_CLASS_ORDER: dict[str, tuple[str, ...]] = {
    "rafdb": RAFDB_ORDER,
    "affectnet": AFFECTNET_ORDER[:7],
    "affectnet7": AFFECTNET_ORDER[:7],
    "affectnet8": AFFECTNET_ORDER,
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


def official_family(blob: Any) -> str | None:
    """'v2' for a POSTER V2 ``main.py`` container (``state_dict`` with ``module.VIT.*`` keys), 'v1'
    for a V1 ``rafdb_best.pth`` (``model_state_dict``), None for anything else."""
    if not isinstance(blob, dict):
        return None
    state = blob.get("state_dict")
    if isinstance(state, dict) and any(str(k).startswith(("module.VIT.", "VIT.")) for k in state):
        return "v2"
    return "v1" if "model_state_dict" in blob else None


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
