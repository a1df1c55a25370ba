"""Official POSTER checkpoints as MLflow runs + registered models (``registry import-official``).

``pipeline.artifact.official`` turns the file into a project model (label order, BGR, crop); this module
records it like a trained run (tags, params, the pyfunc model) and registers it as a challenger,
so the usual review decides whether it becomes the champion.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from pipeline.artifact.official import file_sha256, load_official
from pipeline.artifact.pyfunc import log_poster_model
from pipeline.config import digest_of
from pipeline.registry.names import CHALLENGER, DEFAULT_IMPORT_EXPERIMENT, DEFAULT_NAME, RegistryError, resolve_uri
from pipeline.registry.versions import register_run
from pipeline.tracking import MlflowTracker, end_run, start_or_resume_run


@dataclass
class ImportResult:
    run_id: str
    model_uri: str
    version: str | None
    classes: list[str]


def import_official(checkpoint: str | Path, variant: str = "large", dataset: str = "rafdb",
                    tracking_uri: str | None = None, experiment: str = DEFAULT_IMPORT_EXPERIMENT,
                    name: str = DEFAULT_NAME, alias: str | None = CHALLENGER, register: bool = True,
                    classes: list[str] | None = None, run_name: str | None = None) -> ImportResult:
    """Wrap an official POSTER checkpoint as an MLflow run + pyfunc model, and register it.

    The head is re-ordered from the dataset's official label order into ``classes`` (default:
    the canonical order of the dataset's classes); ``bgr`` is recorded for RAF-DB.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise RegistryError(f"--checkpoint {checkpoint}: no such file")
    uri = resolve_uri(tracking_uri)
    model, cls, extra = load_official(checkpoint, variant, dataset, classes)
    sha = file_sha256(checkpoint)
    pcfg = dataclasses.asdict(model.cfg)
    config_hash = digest_of(pcfg)
    tags = {
        "poster.source": "official", "poster.dataset": extra["dataset"], "poster.variant": variant,
        "poster.classes": ",".join(cls), "poster.dataset_hash": f"official:{extra['dataset']}",
        "poster.config_hash": config_hash, "poster.official_checkpoint": str(checkpoint.resolve()),
        "poster.official_sha256": sha, "poster.bgr": str(extra["bgr"]).lower(),
        "poster.framing": extra["framing"]["name"],
    }
    name_for_run = run_name or f"official-{extra['dataset']}-{variant}-{sha[:8]}"
    run_id = start_or_resume_run(uri, experiment, name_for_run, None, tags)
    try:
        tracker = MlflowTracker(uri, run_id)
        tracker.set_tags(tags)
        tracker.log_params({"model.variant": variant, "official.dataset": extra["dataset"],
                            "official.class_order": ",".join(extra["official_class_order"]),
                            "data.bgr": extra["bgr"], "official.use_crop": extra["use_crop"]})
        model_uri = log_poster_model(uri, run_id, model.state_dict(), model.cfg, cls, extra)
    except BaseException:
        end_run(uri, run_id, "FAILED")
        raise
    end_run(uri, run_id, "FINISHED")
    version = register_run(run_id, uri, name, alias) if register else None
    return ImportResult(run_id, model_uri, version, cls)
