"""Test utilities (tests only): the deterministic weight rule `poster-parity-rule-1` and manifest-built state dicts.

The rule (shared/reference/manifests/README.md) fills any state-dict entry from its model-level key
alone, so a re-implementation can be compared with the official model without real weights.
Draws are made in float64 and then cast, which keeps them bit-identical across CPU kernels.
"""
from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "int64": torch.int64}


def rel_index(ws: int) -> torch.Tensor:
    """Standard Swin relative-position index, int64 [ws*ws, ws*ws] (V2 buffers)."""
    r = torch.arange(ws).repeat_interleave(ws)
    c = torch.arange(ws).repeat(ws)
    return (r[:, None] - r[None, :] + ws - 1) * (2 * ws - 1) + (c[:, None] - c[None, :] + ws - 1)


def deterministic_tensor(key: str, shape, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Value of entry `key` (model-level, without `module.`) under poster-parity-rule-1."""
    shape = tuple(shape)
    name = key.split(".")[-1]
    if not dtype.is_floating_point:
        if name == "relative_position_index":
            return rel_index(math.isqrt(shape[0])).to(dtype)
        return torch.zeros(shape, dtype=dtype)
    kw = dict(generator=torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8"))),
              dtype=torch.float64)
    if name == "running_var":
        t = torch.rand(shape, **kw) * 0.5 + 0.75
    elif name == "running_mean":
        t = torch.randn(shape, **kw) * 0.1
    elif len(shape) == 1 and name != "bias":
        t = 1.0 + 0.1 * torch.randn(shape, **kw)
    elif name == "weight":
        gain = 1.0 if len(shape) == 2 else 0.5
        t = gain * torch.randn(shape, **kw) / math.sqrt(math.prod(shape[1:]))
    elif name == "bias":
        t = 0.05 * torch.randn(shape, **kw)
    else:
        t = 0.2 * torch.randn(shape, **kw)
    return t.to(dtype)


def fixed_input(batch: int = 2, size: int = 224) -> torch.Tensor:
    """The rule's input image batch (seed 0, float64 draw cast to float32)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, size, size, generator=g, dtype=torch.float64).float()


def read_manifest(path: str | Path) -> list[dict]:
    """Entries {'key', 'shape', 'dtype'} of a manifest JSON file."""
    return json.loads(Path(path).read_text())


def manifest_state_dict(entries: list[dict], prefix: str = "") -> dict[str, torch.Tensor]:
    """State dict with the manifest's keys (plus `prefix`), filled by the parity rule. The rule sees
    the model-level key, i.e. without a leading `module.`."""
    out = {}
    for e in entries:
        key = e["key"]
        model_key = key[len("module."):] if key.startswith("module.") else key
        out[prefix + key] = deterministic_tensor(model_key, e["shape"], DTYPES[e["dtype"]])
    return out
