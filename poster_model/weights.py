"""Strict loading of the official POSTER files (`ir50.pth`, MobileFaceNet, V1 training checkpoints).

The official loader silently skipped every key whose name or shape differed. Here every expected key
must be present with the right shape; the only keys allowed to be left over are named below (dead
modules the clean model does not build); anything else raises `WeightLoadError` listing the keys.
All files are read with `torch.load(..., weights_only=True)`.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .model import Poster, build_poster, variant_config

_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{n}" for n in _BN]


def _ir_unit(i: int, shortcut: bool) -> list[str]:
    keys = _bn(f"body.{i}.res_layer.0") + [f"body.{i}.res_layer.{j}.weight" for j in (1, 2, 3)]
    keys += _bn(f"body.{i}.res_layer.4")
    if shortcut:
        keys += [f"body.{i}.shortcut_layer.0.weight"] + _bn(f"body.{i}.shortcut_layer.1")
    return keys


# IR-50's dead `output_layer` (BN2d, -, -, Linear, BN1d), present in ir50.pth
IR50_OUTPUT_KEYS = frozenset(_bn("output_layer.0") + ["output_layer.3.weight", "output_layer.3.bias"]
                             + _bn("output_layer.4"))
# stage 4 of a full ArcFace IR-50 (body.21-23, 256->512); ir50.pth may or may not hold it
IR50_STAGE4_KEYS = frozenset(_ir_unit(21, True) + _ir_unit(22, False) + _ir_unit(23, False))

# Official V1 checkpoint entries that cannot influence logits or features (model-level names;
# /work/shared/reference/manifests/unused_keys.json). The MobileFaceNet `output_layer` is kept as a
# frozen module here (it loads when present), the other two never exist in the clean model.
MOBILEFACENET_OUTPUT_KEYS = frozenset(
    _bn("output_layer.bn") + _bn("output_layer.conv_6_dw.bn")
    + ["output_layer.conv_6_dw.conv.weight", "output_layer.linear.weight"])
V1_UNUSED_KEYS = frozenset(
    [f"face_landback.{k}" for k in MOBILEFACENET_OUTPUT_KEYS]
    + [f"ir_back.{k}" for k in IR50_OUTPUT_KEYS] + ["pyramid_fuse.cls_token"])

# torchvision classifier parts the stride-16 backbones do not build
TV_UNUSED_PREFIXES = {
    "resnet18": ("layer4.", "fc."), "resnet50": ("layer4.", "fc."),
    "efficientnet_b0": ("features.6.", "features.7.", "features.8.", "classifier."),
}


class WeightLoadError(RuntimeError):
    """A weights file does not match the model; the message lists the offending keys."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: unwraps {'model_state_dict'|'state_dict': ...}, strips `module.`."""
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model_state_dict", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise WeightLoadError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _listing(title: str, keys: list[str], limit: int = 40) -> str:
    more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"  {title} ({len(keys)}):\n    " + "\n    ".join(keys[:limit]) + more


def strict_load(module: nn.Module, state: dict[str, torch.Tensor], tolerated=frozenset(),
                tolerated_prefixes: tuple = (), what: str = "weights") -> list[str]:
    """Load `state` into `module`: every module key present with its shape; leftover keys must be
    in `tolerated` or start with a tolerated prefix. Returns the ignored (tolerated) keys."""
    expected = module.state_dict()
    extra = sorted(set(state) - set(expected))
    ignored = [k for k in extra if k in tolerated or k.startswith(tuple(tolerated_prefixes))]
    unexpected = [k for k in extra if k not in set(ignored)]
    # a tolerated (dead) key may also be absent from the file: the module keeps its own value then
    missing = sorted(set(expected) - set(state) - set(tolerated))
    mismatched = [f"{k}: file {tuple(state[k].shape)} != model {tuple(v.shape)}"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = [_listing(title, keys) for title, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                if keys]
    if problems:
        raise WeightLoadError(f"cannot load {what}:\n" + "\n".join(problems))
    module.load_state_dict({k: state.get(k, v) for k, v in expected.items()}, strict=True)
    return ignored


def load_pretrained(model: Poster, ir50_path=None, mobilefacenet_path=None,
                    image_backbone_path=None) -> dict[str, list[str]]:
    """Load the official pretrained backbones (and/or a local torchvision backbone) into `model`.

    Returns, per file, the keys that were present but deliberately ignored (dead modules).
    """
    report = {}
    if ir50_path is not None:
        if model.image_key != "ir_back":
            raise WeightLoadError(f"ir50 weights given but the image backbone is {model.cfg.image_backbone}")
        report["ir50"] = strict_load(model.ir_back, read_state_dict(ir50_path),
                                     IR50_OUTPUT_KEYS | IR50_STAGE4_KEYS, what=f"IR-50 from {ir50_path}")
    if mobilefacenet_path is not None:
        report["mobilefacenet"] = strict_load(model.face_landback, read_state_dict(mobilefacenet_path),
                                              MOBILEFACENET_OUTPUT_KEYS, what=f"MobileFaceNet from {mobilefacenet_path}")
    if image_backbone_path is not None:
        report["image_backbone"] = load_image_backbone(model, image_backbone_path)
    return report


def load_image_backbone(model: Poster, path) -> list[str]:
    """Load a local torchvision state dict (e.g. resnet50 ImageNet weights) into the image backbone."""
    name = model.cfg.image_backbone
    if name not in TV_UNUSED_PREFIXES:
        raise WeightLoadError(f"{name} is not a torchvision backbone; use ir50_path for IR-50")
    return strict_load(model.tv_back, read_state_dict(path), tolerated_prefixes=TV_UNUSED_PREFIXES[name],
                       what=f"{name} from {path}")


def load_official_checkpoint(path, variant: str = "large", num_classes: int = 7) -> Poster:
    """Build the faithful V1 model and load an official training checkpoint into it, strictly except
    for exactly `V1_UNUSED_KEYS`. All buffers load, including the landmark net's (drifted) BN
    statistics. Returns the model in eval mode."""
    if variant not in ("small", "base", "large"):
        raise ValueError(f"official POSTER V1 variants are small/base/large, got {variant!r}")
    model = build_poster(variant_config(variant, num_classes))
    strict_load(model, read_state_dict(path), V1_UNUSED_KEYS, what=f"POSTER-{variant} from {path}")
    return model.eval()
