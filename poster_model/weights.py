"""Strict loading of the official POSTER files (`ir50.pth`, MobileFaceNet, V1 and V2 training checkpoints).

The official loader silently skipped every key whose name or shape differed. Here every expected key
must be present with the right shape; the only keys allowed to be left over are named below (dead
modules the clean model does not build); anything else raises `WeightLoadError` listing the keys.
All files are read with `torch.load(..., weights_only=True)`.

Official V2 training checkpoints also pickle two `RecorderMeter` objects (classes of the official
`main.py`, holding numpy loss/accuracy curves), which `weights_only=True` refuses. `read_state_dict`
then retries with exactly those globals mapped onto an inert placeholder that discards whatever
it is given: no upstream code is imported or run, nothing but the tensors is kept. Any other
unsafe global still fails, with a message naming it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .model import V2_VARIANTS, Poster, build_poster, variant_config

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
# ../shared/reference/manifests/unused_keys.json). The MobileFaceNet `output_layer` is kept as a
# frozen module here (it loads when present), the other two never exist in the clean model.
MOBILEFACENET_OUTPUT_KEYS = frozenset(
    _bn("output_layer.bn") + _bn("output_layer.conv_6_dw.bn")
    + ["output_layer.conv_6_dw.conv.weight", "output_layer.linear.weight"])
V1_UNUSED_KEYS = frozenset(
    [f"face_landback.{k}" for k in MOBILEFACENET_OUTPUT_KEYS]
    + [f"ir_back.{k}" for k in IR50_OUTPUT_KEYS] + ["pyramid_fuse.cls_token"])

# Official V2 checkpoint entries that cannot influence the logits (unused_keys.json, model-level
# names). MobileFaceNet's output_layer is kept as a frozen module (as in V1); the rest are only
# built with PosterConfig(official_dead_modules=True).
V2_VIT_DEAD_KEYS = frozenset(
    ["VIT.CON1.weight", "VIT.IRLinear1.weight", "VIT.IRLinear1.bias", "VIT.IRLinear2.weight", "VIT.IRLinear2.bias",
     "VIT.eca_block.conv.weight", "VIT.patch_embed.proj.weight", "VIT.patch_embed.proj.bias"]
    + [f"VIT.blocks.{i}.conv.{n}" for i in (0, 1) for n in ("weight", "bias")])
V2_UNUSED_KEYS = frozenset(
    [f"face_landback.{k}" for k in MOBILEFACENET_OUTPUT_KEYS]
    + [f"ir_back.{k}" for k in IR50_OUTPUT_KEYS]) | V2_VIT_DEAD_KEYS

# Globals the official V2 `main.py` pickles next to the weights ('recorder', 'recorder1'):
# the RecorderMeter classes (module `__main__` when main.py runs as a script) and numpy's array
# plumbing for their curves. Mapped onto `_Discarded`, so they are never imported nor kept.
RECORDER_GLOBALS = tuple(f"{m}.{c}" for m in ("__main__", "main") for c in ("RecorderMeter", "RecorderMeter1")) + tuple(
    f"{m}.{n}" for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")
) + ("numpy.ndarray", "numpy.dtype") + tuple(f"numpy.dtypes.{t}DType" for t in ("Float64", "Float32", "Int64"))

# torchvision classifier parts the stride-16 backbones do not build
TV_UNUSED_PREFIXES = {
    "resnet18": ("layer4.", "fc."), "resnet50": ("layer4.", "fc."),
    "efficientnet_b0": ("features.6.", "features.7.", "features.8.", "classifier."),
}


class WeightLoadError(RuntimeError):
    """A weights file does not match the model; the message lists the offending keys."""


class _Discarded:
    """Inert stand-in for a pickled non-tensor object we do not need: accepts and drops everything."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


def load_weights_only(path: str | Path):
    """`torch.load(weights_only=True)`, tolerating exactly the official V2 recorder objects."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as first:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        if not unsafe or not unsafe <= set(RECORDER_GLOBALS):
            raise WeightLoadError(
                f"{path}: refused by torch.load(weights_only=True): it pickles code objects "
                f"{sorted(unsafe - set(RECORDER_GLOBALS)) or sorted(unsafe)}. Only the official V2 "
                "'recorder'/'recorder1' objects are tolerated. Fix: in a trusted environment, re-save "
                "just the tensors, e.g. torch.save({'state_dict': ck['state_dict']}, 'clean.pth').") from first
    with torch.serialization.safe_globals([(_Discarded, name) for name in RECORDER_GLOBALS]):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: unwraps {'model_state_dict'|'state_dict': ...}, strips `module.`."""
    obj = load_weights_only(path)
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


def load_pretrained(model: nn.Module, ir50_path=None, mobilefacenet_path=None,
                    image_backbone_path=None) -> dict[str, list[str]]:
    """Load the official pretrained backbones (and/or a local torchvision backbone) into `model`.

    Returns, per file, the keys that were present but deliberately ignored (dead modules).
    """
    report = {}
    if ir50_path is not None:
        if model.image_key != "ir_back":
            raise WeightLoadError(f"ir50 weights given but the image backbone is {model.cfg.image_backbone}")
        state = read_state_dict(ir50_path)
        if model.cfg.arch == "v2":
            state = split_ir50_keys(state, model.cfg.ir_units)
        report["ir50"] = strict_load(model.ir_back, state, IR50_OUTPUT_KEYS | IR50_STAGE4_KEYS,
                                     what=f"IR-50 from {ir50_path}")
    if mobilefacenet_path is not None:
        report["mobilefacenet"] = strict_load(model.face_landback, read_state_dict(mobilefacenet_path),
                                              MOBILEFACENET_OUTPUT_KEYS, what=f"MobileFaceNet from {mobilefacenet_path}")
    if image_backbone_path is not None:
        report["image_backbone"] = load_image_backbone(model, image_backbone_path)
    return report


def split_ir50_keys(state: dict[str, torch.Tensor], units: tuple = (3, 4, 14)) -> dict[str, torch.Tensor]:
    """V1-style `body.N.*` -> V2's `body1/2/3.M.*` (N = 0-2 / 3-6 / 7-20 for the real net). Stage-4
    units (`body.21+`) keep their name so the tolerated list still matches; re-keyed files pass."""
    bounds = [sum(units[:i]) for i in range(4)]
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] == "body" and int(parts[1]) < bounds[3]:
            n = int(parts[1])
            stage = next(i for i in (1, 2, 3) if n < bounds[i])
            k = ".".join([f"body{stage}", str(n - bounds[stage - 1])] + parts[2:])
        out[k] = v
    return out


def load_image_backbone(model: Poster, path) -> list[str]:
    """Load a local torchvision state dict (e.g. resnet50 ImageNet weights) into the image backbone."""
    name = model.cfg.image_backbone
    if name not in TV_UNUSED_PREFIXES:
        raise WeightLoadError(f"{name} is not a torchvision backbone; use ir50_path for IR-50")
    return strict_load(model.tv_back, read_state_dict(path), tolerated_prefixes=TV_UNUSED_PREFIXES[name],
                       what=f"{name} from {path}")


def load_official_checkpoint(path, variant: str = "large", num_classes: int = 7,
                             logits_only: bool = False) -> nn.Module:
    """Build the faithful model and load an official training checkpoint into it, strictly except
    for exactly the dead entries (`V1_UNUSED_KEYS` / `V2_UNUSED_KEYS`). V1 files hold
    `model_state_dict`, V2 files `state_dict` (plus epoch, best_acc, optimizer and the recorders).
    All buffers load, including the landmark net's (drifted) BN statistics and V2's
    `relative_position_index`. Returns the model in eval mode; its forward returns
    (logits, features), or only logits with `logits_only=True` (the official V2 contract)."""
    if variant not in ("small", "base", "large", "v2"):
        raise ValueError(f"official POSTER variants are small/base/large (V1) and v2, got {variant!r}")
    model = build_poster(variant_config(variant, num_classes))
    unused = V2_UNUSED_KEYS if variant in V2_VARIANTS else V1_UNUSED_KEYS
    name = "POSTER V2" if variant == "v2" else f"POSTER-{variant}"
    strict_load(model, read_state_dict(path), unused, what=f"{name} from {path}")
    model.eval()
    if logits_only:
        from .model_v2 import LogitsOnly

        return LogitsOnly(model).eval()
    return model
