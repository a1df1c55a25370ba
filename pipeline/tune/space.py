"""Search spaces as data (``tune_spaces/*.py``): load them, check them against the config tree,
and apply one sampled point to a base ``TrainConfig``. No Ray here; ``pipeline.tune`` turns the
domains into ``tune.*`` objects.

A key is a path in the config tree. ``loss.weights.<term>`` sets one entry of the weights dict
and ``model.overrides.<field>`` one PosterConfig field; every other key names a leaf field.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import json
import typing
from pathlib import Path
from typing import Any

from pipeline.config import REPO_ROOT, ConfigError, TrainConfig, from_dict, validate
from poster_model.losses import TERMS as LOSS_TERMS

# kind -> number of arguments (None: a non-empty list of values)
DOMAINS: dict[str, int | None] = {
    "choice": None, "grid": None, "uniform": 2, "loguniform": 2, "quniform": 3, "randint": 2,
}
DICT_KEYS = {"loss.weights": "loss term", "model.overrides": "PosterConfig field"}


def load_space(ref: str) -> dict[str, Any]:
    """``SPACE`` of a space module: a file path (``tune_spaces/pyramid.py``) or a module name
    (``tune_spaces.pyramid``, or just ``pyramid``)."""
    module = _import_space_module(ref)
    space = getattr(module, "SPACE", None)
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"space {ref!r}: the module must define a non-empty dict SPACE")
    return dict(space)


def _import_space_module(ref: str) -> Any:
    path = Path(ref)
    if ref.endswith(".py"):
        path = path if path.is_absolute() else Path.cwd() / path
        if not path.is_file():
            raise ConfigError(f"space file {ref} does not exist")
        path = path.resolve()
        try:  # inside the repo: import as a package module so relative imports work
            rel = path.relative_to(REPO_ROOT).with_suffix("")
            return importlib.import_module(".".join(rel.parts))
        except (ValueError, ImportError):
            spec = importlib.util.spec_from_file_location(f"_space_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    name = ref if "." in ref else f"tune_spaces.{ref}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise ConfigError(f"space {ref!r}: no module {name} ({e})") from None


def domain_of(spec: Any) -> tuple[str, Any]:
    """``(kind, args)`` of one space value; a plain value is ``("const", value)``."""
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DOMAINS):
        return "const", spec
    kind, args = next(iter(spec.items()))
    return kind, args


def check_domain(key: str, spec: Any) -> None:
    kind, args = domain_of(spec)
    if kind == "const":
        if isinstance(spec, dict):
            raise ConfigError(f"space {key}: a dict value must be one domain of {sorted(DOMAINS)}, got {spec}")
        return
    n = DOMAINS[kind]
    if not isinstance(args, (list, tuple)) or not args or (n is not None and len(args) != n):
        want = "a non-empty list" if n is None else f"{n} numbers"
        raise ConfigError(f"space {key}: {kind} takes {want}, got {args!r}")
    if n is not None:
        lo, hi = args[0], args[1]
        if not lo < hi or (kind == "loguniform" and lo <= 0):
            raise ConfigError(f"space {key}: {kind} bounds {args} need lo < hi (and lo > 0 for loguniform)")


def check_key(key: str) -> None:
    """Raise ConfigError unless ``key`` is a settable path of the config tree."""
    from poster_model import PosterConfig

    parts = key.split(".")
    cls: Any = TrainConfig
    for i, part in enumerate(parts):
        fields = {f.name for f in dataclasses.fields(cls)}
        if part not in fields:
            where = ".".join(parts[:i]) or "the root"
            raise ConfigError(f"space key {key}: no field {part!r} under {where}; valid: {sorted(fields)}")
        hint = typing.get_type_hints(cls)[part]
        prefix = ".".join(parts[: i + 1])
        if dataclasses.is_dataclass(hint):
            cls = hint
            continue
        if prefix in DICT_KEYS:
            allowed = LOSS_TERMS if prefix == "loss.weights" else [f.name for f in dataclasses.fields(PosterConfig)]
            if len(parts) != i + 2 or parts[-1] not in allowed:
                raise ConfigError(f"space key {key}: {prefix}.<{DICT_KEYS[prefix]}> must name one of "
                                  f"{sorted(allowed)}")
            return
        if i != len(parts) - 1:
            raise ConfigError(f"space key {key}: {prefix} is a leaf, not a section")
        return
    raise ConfigError(f"space key {key}: names a section, not a field")


def representatives(spec: Any) -> list[Any]:
    """Values that stand for a domain when checking it: every choice, and the range ends."""
    kind, args = domain_of(spec)
    if kind == "const":
        return [spec]
    if kind in ("choice", "grid"):
        return list(args)
    if kind == "randint":
        return [int(args[0]), int(args[1]) - 1]
    return [args[0], args[1]]


def set_path(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict; a dict entry (``loss.weights.x``) is added if missing."""
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)


def _check_override_type(key: str, value: Any) -> None:
    """``model.overrides`` is a free dict in the tree, so check its value types here."""
    from poster_model import PosterConfig

    if key.startswith("loss.weights."):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: a loss weight must be a number, got {value!r}")
        return
    if not key.startswith("model.overrides."):
        return
    default = getattr(PosterConfig(), key.rsplit(".", 1)[1])
    want: tuple[type, ...] = {bool: (bool,), int: (int,), float: (int, float), str: (str,),
                              tuple: (list, tuple)}[type(default)]
    if not isinstance(value, want) or (isinstance(value, bool) and bool not in want):
        raise ConfigError(f"{key}: expected {type(default).__name__}, got {type(value).__name__} {value!r}")


def config_for_trial(base: TrainConfig, sample: dict[str, Any], num_classes: int = 7) -> TrainConfig:
    """``base`` with the sampled values set: a trial's one ``TrainConfig``, which goes down to the
    workers as is. Raises ConfigError/ValueError when the values do not fit, including when the
    model config would not build (e.g. num_heads not dividing a width)."""
    from pipeline.train.builders import poster_config

    tree = base.to_dict()
    for key, value in sample.items():
        _check_override_type(key, value)
        set_path(tree, key, value)
    cfg = from_dict(TrainConfig, tree)
    validate(cfg)
    poster_config(cfg.model, num_classes)
    return cfg


def check_space(space: dict[str, Any], base: TrainConfig, num_classes: int = 7) -> int:
    """Check every key path and domain, and build a config for every representative value of
    every key (the other keys at their first value). Returns the number of configs built.

    Keys are checked one at a time, so a combination that conflicts (num_heads 8 with an
    embed_dim of 48) only fails in the trial that draws it, which is then recorded as failed.
    """
    for key, spec in space.items():
        check_key(key)
        check_domain(key, spec)
    first = {k: representatives(v)[0] for k, v in space.items()}
    built = 0
    for key, spec in space.items():
        for value in representatives(spec):
            try:
                config_for_trial(base, {**first, key: value}, num_classes)
            except (ConfigError, ValueError, TypeError) as e:
                raise ConfigError(f"space {key}={value!r} does not fit the config: {e}") from None
            built += 1
    return built


def needs_json(value: Any) -> bool:
    """Tune searchers (Optuna especially) only take str/int/float/bool/None categories."""
    return not (value is None or isinstance(value, (str, int, float, bool)))


def json_keys(space: dict[str, Any]) -> list[str]:
    """Keys whose values travel through Tune as JSON strings (lists, dicts)."""
    out = []
    for key, spec in space.items():
        kind, args = domain_of(spec)
        values = args if kind in ("choice", "grid") else [spec] if kind == "const" else []
        if any(needs_json(v) for v in values):
            out.append(key)
    return out


def decode_sample(config: dict[str, Any], space: dict[str, Any]) -> dict[str, Any]:
    """The sampled point as config values (JSON-encoded values decoded), in space order."""
    enc = set(json_keys(space))
    return {k: json.loads(config[k]) if k in enc and isinstance(config[k], str) else config[k]
            for k in space if k in config}
