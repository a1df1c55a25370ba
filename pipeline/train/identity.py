"""What a training run was started on, kept beside its Ray checkpoints so a rerun of the same
``run.name`` only resumes when it would continue the same experiment.

Ray Train resumes any run whose name and storage path match, whatever the data or model; the
weights of a 7-class model on other shards would then be continued silently and MLflow would keep
the old params and dataset tags. ``<storage>/<name>/poster_run.json`` records the dataset content
hash, the class list and a digest of the model config; a rerun compares them first.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from pipeline.config import TrainConfig, digest_of
from pipeline.schema import filesystem, join

IDENTITY_FILE = "poster_run.json"


class ResumeRefused(RuntimeError):
    """A rerun of an existing run name differs in data, classes or model."""


def model_digest(cfg: TrainConfig) -> str:
    return digest_of(cfg.to_dict()["model"])


def identity(cfg: TrainConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    return {"dataset_hash": manifest.get("content_hash", ""), "classes": list(manifest["classes"]),
            "model_config_hash": model_digest(cfg), "model": cfg.to_dict()["model"],
            "shards": cfg.data.shards}


def _has_checkpoint(fs: Any, run_dir: str) -> bool:
    from pyarrow import fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(run_dir, allow_not_found=True))
    except (FileNotFoundError, OSError):
        return False
    return any(i.base_name.startswith("checkpoint_") for i in infos)


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    if old.get("dataset_hash") != new["dataset_hash"]:
        out.append(f"dataset content_hash {str(old.get('dataset_hash'))[:16]} -> {new['dataset_hash'][:16]} "
                   f"(shards {old.get('shards')} -> {new['shards']})")
    if old.get("classes") != new["classes"]:
        out.append(f"classes {old.get('classes')} -> {new['classes']}")
    if old.get("model_config_hash") != new["model_config_hash"]:
        changed = sorted(k for k in set(old.get("model") or {}) | set(new["model"])
                         if (old.get("model") or {}).get(k) != new["model"].get(k))
        out.append(f"model config ({', '.join('model.' + k for k in changed) or 'digest'})")
    return out


def check_or_record(cfg: TrainConfig, manifest: dict[str, Any], name: str) -> str:
    """The run name to use: ``name`` when it is new or its checkpoints match this config;
    ``<name>-<hash>`` when they differ and ``run.new_run_on_change`` is set; else ResumeRefused."""
    fs, root = filesystem(cfg.run.storage_path)
    new = identity(cfg, manifest)
    run_dir = join(root, name)
    path = join(run_dir, IDENTITY_FILE)
    if _has_checkpoint(fs, run_dir):
        try:
            with fs.open_input_stream(path) as f:
                old = json.loads(f.read().decode())
        except (FileNotFoundError, OSError):
            old = None  # a run from before identity files: nothing to compare with
        changed = differences(old, new) if old is not None else []
        if changed:
            if not cfg.run.new_run_on_change:
                raise ResumeRefused(
                    f"run {name!r} in {cfg.run.storage_path} has checkpoints from another experiment; "
                    f"changed: {'; '.join(changed)}. Use another run.name, or set "
                    "run.new_run_on_change=true to start a new run instead of resuming")
            digest = hashlib.sha256(json.dumps(new, sort_keys=True).encode()).hexdigest()[:8]
            return check_or_record(cfg, manifest, f"{name}-{digest}")
        if old is not None:
            return name
    fs.create_dir(run_dir, recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(new, indent=1, sort_keys=True).encode())
    return name


STOP_FILE = "poster_stopped.json"


def write_stop(run_dir: str, reason: str) -> None:
    """Rank 0 records why it stopped the run cleanly (no exception, so no Ray retries)."""
    fs, path = filesystem(run_dir)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(join(path, STOP_FILE)) as f:
        f.write(json.dumps({"reason": reason}).encode())


def pop_stop(run_dir: str) -> str | None:
    """The reason a run stopped early (and forget it, so a rerun starts clean), or None."""
    fs, path = filesystem(run_dir)
    try:
        with fs.open_input_stream(join(path, STOP_FILE)) as f:
            reason = json.loads(f.read().decode())["reason"]
    except (FileNotFoundError, OSError):
        return None
    fs.delete_file(join(path, STOP_FILE))
    return reason
