"""Load any model form the project knows into a ``LoadedModel`` (eval-mode module + classes + extra):

- a registry or logged-model URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``models:/m-…``):
  only the pyfunc's ``weights.pt`` is downloaded (``load_torch_model``);
- a training checkpoint (``checkpoint.pt`` or its directory, or a Ray run directory whose newest
  ``checkpoint_*`` is used; the best-epoch weights inside are loaded);
- a ``weights.pt`` as logged with the pyfunc, or a downloaded pyfunc directory;
- an official POSTER V1/V2 checkpoint (``variant`` and ``dataset`` give its architecture and label
  order, ``pipeline.artifact.official``).

Nothing here imports the training config or Ray: a checkpoint's ``PosterConfig`` is rebuilt from
the ``model`` section it stores, by ``pipeline.artifact.files.poster_config_for``.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.artifact.files import (CKPT_FILE, WEIGHTS, load_file, load_weights_file,
                                     poster_config_for)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    classes: list[str]
    extra: dict[str, Any]
    source: str  # what was loaded, for reports
    kind: str  # registry | checkpoint | weights | official

    @property
    def bgr(self) -> bool:
        return bool(self.extra.get("bgr", False))

    @property
    def use_crop(self) -> bool:
        return bool(self.extra.get("use_crop", True))

    @property
    def framing(self) -> Any:
        """The framing the model was trained on (``pipeline.faces.framing``; older models: project)."""
        from pipeline.faces.framing import of_extra

        return of_extra(self.extra)

    @property
    def parameters(self) -> int:
        return int(sum(p.numel() for p in self.model.parameters()))


def is_model_uri(spec: str) -> bool:
    return spec.startswith(("models:/", "runs:/", "m-")) or "://" in spec


def is_storage_uri(spec: str) -> bool:
    """A checkpoint or weights file in object storage (``s3://...``), as ``pipeline.train`` prints it."""
    from pipeline.storage import scheme

    return scheme(spec) in ("s3", "s3a", "gs", "gcs", "abfs", "hdfs")


def _fetch(spec: str, into: str) -> Path:
    """Copy a checkpoint folder or model file from object storage to ``into`` (small: one run)."""
    import pyarrow.fs as pafs

    from pipeline.storage import filesystem, preflight

    preflight(spec, "--model", must_exist=True)
    fs, path = filesystem(spec)
    target = Path(into) / (Path(path).name or "model")  # a file or a folder, copied as it is
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        target.mkdir()  # copy_files writes into the folder but does not create it
    pafs.copy_files(path, str(target), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return target


def resolve_model_uri(model_uri: str, tracking_uri: str | None = None) -> str:
    """``models:/NAME/VERSION[/path]``, ``models:/NAME@ALIAS[/path]`` or ``models:/m-…[/path]`` →
    the artifact location it names, looked up in ``tracking_uri``'s registry.

    MLflow 3.17's ``download_artifacts(registry_uri=…)`` resolves ``models:/`` URIs with the
    *global* registry URI (``ModelsArtifactRepository._get_model_uri_infos``), so code that passes
    its store explicitly resolves the URI itself. Other URIs are returned unchanged.
    """
    if not tracking_uri or not model_uri.startswith("models:/"):
        return model_uri
    from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    base, sub = ModelsArtifactRepository.split_models_uri(model_uri)
    body = base[len("models:/"):].strip("/")
    if "@" in body:
        name, alias = body.split("@", 1)
        version = client.get_model_version_by_alias(name, alias).version
        location = client.get_model_version_download_uri(name, version)
    elif "/" in body:
        name, version = body.split("/", 1)
        location = client.get_model_version_download_uri(name, version)
    else:
        location = client.get_logged_model(body).artifact_location
    return location.rstrip("/") + (f"/{sub}" if sub else "")


def load_torch_model(model_uri: str, tracking_uri: str | None = None) -> tuple[torch.nn.Module, list[str], dict[str, Any]]:
    """The plain nn.Module behind a logged pyfunc (``models:/poster-fer@champion`` etc.).

    ``tracking_uri`` (also the registry URI) is used per call, never set globally; without it
    MLflow's current URIs apply. Only ``weights.pt`` is downloaded.
    """
    import mlflow

    uri = resolve_model_uri(model_uri, tracking_uri)
    kw = {"tracking_uri": tracking_uri} if tracking_uri else {}
    with tempfile.TemporaryDirectory() as d:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{uri.rstrip('/')}/artifacts/{WEIGHTS}", dst_path=d, **kw)
        except Exception:  # other layouts: fetch the whole model and look for the file
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=d, **kw)
        found = [Path(local)] if Path(local).is_file() else list(Path(local).rglob(WEIGHTS))
        if not found:
            raise FileNotFoundError(f"{model_uri} has no {WEIGHTS}: not a poster-ray model")
        return load_weights_file(found[0])


def _newest_checkpoint_dir(run_dir: Path) -> Path | None:
    cands = sorted((p for p in run_dir.glob("checkpoint_*") if (p / CKPT_FILE).is_file()),
                   key=lambda p: p.name)
    return cands[-1] if cands else None


def _from_training_checkpoint(ck: dict[str, Any], source: str) -> LoadedModel:
    """The best-epoch weights of a training checkpoint; its ``config`` is the run's, verbatim."""
    import poster_model

    classes = list(ck["classes"])
    cfg = ck.get("config") or {}
    mcfg = cfg.get("model") or {}
    variant = mcfg.get("variant")
    if not variant:  # the loop saves the whole config tree, so only a hand-made file lacks it
        raise ValueError(f"{source}: training checkpoint without config.model.variant; re-save it with "
                         "the run's config (pipeline.train.checkpoint.save) or load its weights.pt")
    model = poster_model.build_poster(poster_config_for(variant, mcfg.get("overrides"), len(classes)))
    model.load_state_dict(ck.get("best_model") or ck["model"])
    extra = {"bgr": bool(cfg.get("data", {}).get("bgr", False)), "use_crop": True,
             "variant": variant, "epoch": int(ck.get("epoch", -1)),
             "best_epoch": int(ck.get("best_epoch", -1))}
    if ck.get("framing"):
        extra["framing"] = dict(ck["framing"])
    return LoadedModel(model.eval(), classes, extra, source, "checkpoint")


def _model_file(spec: str, path: Path) -> Path:
    """A directory → the model file inside it (checkpoint, weights, pyfunc, newest checkpoint_*)."""
    for cand in (path / CKPT_FILE, path / WEIGHTS, path / "artifacts" / WEIGHTS):  # last: a pyfunc dir
        if cand.is_file():
            return cand
    if (newest := _newest_checkpoint_dir(path)) is not None:
        return newest / CKPT_FILE
    raise FileNotFoundError(f"{spec}: no {CKPT_FILE}, {WEIGHTS} or checkpoint_*/ inside")


def load_model(spec: str, tracking_uri: str | None = None, variant: str = "large",
               dataset: str = "rafdb", classes: list[str] | None = None) -> LoadedModel:
    """Load any model form the project knows (see the module docstring)."""
    if is_storage_uri(spec):  # fetched, loaded, and named by the URI the user gave
        with tempfile.TemporaryDirectory() as d:
            loaded = load_model(str(_fetch(spec, d)), tracking_uri, variant, dataset, classes)
        loaded.source = spec
        return loaded
    path = Path(spec)
    if not path.exists():
        if is_model_uri(spec):
            from pipeline.tracking import default_tracking_uri

            model, cls, extra = load_torch_model(spec, default_tracking_uri(tracking_uri or ""))
            return LoadedModel(model, cls, extra, spec, "registry")
        raise FileNotFoundError(f"model {spec!r}: no such file or directory, and not a models:/ URI")
    if path.is_dir():
        path = _model_file(spec, path)
    blob = load_file(path) if path.suffix in (".pt", ".pth", ".tar") else None
    if blob is None:
        raise ValueError(f"{path}: expected a .pt/.pth checkpoint")
    if "poster_config" in blob:
        model, cls, extra = load_weights_file(path)
        return LoadedModel(model, cls, extra, str(path), "weights")
    from pipeline.artifact.official import load_official, official_family

    family = official_family(blob)
    if family is not None:
        if family == "v2":
            variant = "v2"  # the file says which family it is; --variant only picks V1's size
        model, cls, extra = load_official(path, variant, dataset, classes)
        return LoadedModel(model, cls, extra, str(path), "official")
    if "model" in blob and "classes" in blob:
        return _from_training_checkpoint(blob, str(path))
    raise ValueError(f"{path}: not a poster-ray checkpoint, weights.pt or official POSTER checkpoint "
                     f"(keys: {sorted(blob)[:8]})")
