"""Model card: a markdown page per registered version (MLflow has no model-card object).

Built from what the training run recorded — tags (dataset manifest hash, variant, config hash,
class order, shards), params (the flattened config), final val_/test_ metrics and the test
confusion matrix — plus the shard manifest when it is still readable. ``pipeline.registry``
logs it as ``model_card/model_card.md`` (with the confusion PNG beside it) into the run and into
the logged model, and puts it in the version description.
"""
from __future__ import annotations

from typing import Any

from pipeline.metrics import HEADLINE, fmt
from pipeline.registry.names import CHAMPION, candidates_of, served_of

RECIPE_PARAMS = (
    "model.variant", "model.overrides", "model.official_checkpoint", "model.ir50_weights",
    "model.mobilefacenet_weights", "loss.weights", "loss.label_smoothing", "optim.name", "optim.lr",
    "optim.weight_decay", "optim.sam", "optim.sam_rho", "optim.ema_decay", "schedule.name",
    "schedule.epochs", "schedule.warmup_epochs", "data.batch_size", "data.hflip",
    "data.random_erasing", "data.gaussian_noise", "data.crop_area_min", "data.rotation", "data.bgr",
    "data.class_balanced_loss",
    "data.max_train_rows", "scaling.num_workers", "checkpoint.metric",
)
CARD_METRICS = HEADLINE + ("loss",)

GENERAL_LIMITS = (
    "Inputs must be faces cut in the model's framing (see Data): `pipeline.predict` and the "
    "pyfunc's `detect` mode do that from raw photos; other framings shift accuracy.",
    "One face per image: the detector is run with `max_num_faces=1`.",
    "The checkpoint is selected on the validation metric; test numbers are reported once, but "
    "repeated registry reviews on the same test split slowly turn it into a selection set.",
    "Facial-expression labels are culturally and individually variable; the model predicts a "
    "posed/perceived category, not an inner emotional state. Do not use it for decisions about people.",
)


def _fmt(v: Any) -> str:
    return fmt(v, ".4f")


def _metric_table(metrics: dict[str, float], splits: tuple[str, ...]) -> list[str]:
    keys = [k for k in CARD_METRICS if any(f"{s}_{k}" in metrics for s in splits)]
    if not keys:
        return ["_No evaluation metrics were recorded for this run._"]
    lines = ["| metric | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(_fmt(metrics.get(f"{s}_{k}", "–")) for s in splits) + " |")
    return lines


def _recall_table(metrics: dict[str, float], classes: list[str], splits: tuple[str, ...],
                  counts: dict[str, dict[str, int]] | None) -> list[str]:
    if not any(f"{s}_recall_{c}" in metrics for s in splits for c in classes):
        return ["_No per-class recall recorded._"]
    head = "| class | " + " | ".join(f"{s} recall" for s in splits)
    sep = "|---|" + "---|" * len(splits)
    if counts:
        head += " | " + " | ".join(f"{s} n" for s in ("train", "test") if s in counts)
        sep += "---|" * len([s for s in ("train", "test") if s in counts])
    lines = [head + " |", sep]
    for c in classes:
        row = f"| {c} | " + " | ".join(_fmt(metrics.get(f"{s}_recall_{c}", "–")) for s in splits)
        if counts:
            row += " | " + " | ".join(str(counts[s].get(c, 0)) for s in ("train", "test") if s in counts)
        lines.append(row + " |")
    return lines


def _limits(tags: dict[str, str], params: dict[str, str], manifest: dict[str, Any] | None,
            classes: list[str], metrics: dict[str, float]) -> list[str]:
    out = []
    source = (manifest or {}).get("source")
    source_name = source.get("name") if isinstance(source, dict) else source
    if source_name == "synthetic" or "synthetic" in tags.get("poster.shards", ""):
        out.append("Trained on **synthetic** procedurally drawn faces: a pipeline check, "
                   "not a facial-expression model for real photos.")
    variant = tags.get("poster.variant", params.get("model.variant", ""))
    if variant in ("tiny", "v2_tiny"):
        out.append(f"`{variant}` is a CPU smoke variant (thin IR-50, narrow fusion), far below the paper's capacity.")
    if not params.get("model.ir50_weights") and tags.get("poster.source") != "official":
        which = "IR-50" if params.get("model.mobilefacenet_weights") else "IR-50 / MobileFaceNet"
        out.append(f"No pretrained {which} weights were configured: backbones "
                   "started from random initialisation.")
    if tags.get("poster.landmark_net") == "random-frozen":
        out.append("The landmark net (MobileFaceNet) was **random and frozen**: its features are near-constant, "
                   "so the landmark stream carried almost no signal. Pretrain one with `python -m pipeline.pretrain "
                   "landmarks` and set `model.mobilefacenet_weights`.")
    if tags.get("poster.source") == "official":
        out.append("Imported official checkpoint: its training data and alignment are the "
                   "authors' (RAF-DB aligned 100×100 or AffectNet crops, recorded as its framing); `poster.dataset_hash` names no project manifest, "
                   "so reviews need `--allow-other-shards`.")
    if tags.get("poster.framing") == "dataset-crop":
        out.append("Trained on a dataset's **own crops** (`ingest --keep-framing`), a framing with no "
                   "detector recipe: predict on photos falls back to the project framing (with a "
                   "warning) and loses accuracy. Re-ingest without --keep-framing to fix.")
    if str(params.get("data.bgr", tags.get("poster.bgr", ""))).lower() == "true":
        out.append("Expects **BGR** pixel order internally (official RAF-DB quirk); the pyfunc handles it.")
    missing = [c for c in classes if f"test_recall_{c}" not in metrics]
    if metrics and missing:
        out.append(f"No test rows for: {', '.join(missing)} — those recalls are unmeasured.")
    if manifest:
        train = manifest.get("counts", {}).get("train", {})
        vals = [v for v in train.values() if v]
        if vals and max(vals) > 5 * min(vals):
            out.append(f"Class imbalance in training data (max/min = {max(vals) / min(vals):.1f}); "
                       "see mean-class accuracy and per-class recall rather than accuracy alone.")
    return out + list(GENERAL_LIMITS)


def _framing_text(name: str, manifest: dict[str, Any] | None) -> str:
    from pipeline.faces import framing as FR

    spec = FR.of_manifest(manifest) if manifest else FR.get(name) if name in FR.FRAMINGS else None
    if spec is None:
        return "unknown framing"
    origin = (manifest or {}).get("framing", {}).get("origin")
    how = {"dataset": " (the dataset's own crop, kept at ingest)",
           "detector": " (cut by the ingest detector)"}.get(origin or "", "")
    return f"{spec.description}{how}; border `{spec.border}`"


def build_model_card(*, name: str, version: str | None, run: Any, classes: list[str],
                     manifest: dict[str, Any] | None = None, confusion_png: str | None = None,
                     confusion: dict[str, Any] | None = None, model_uri: str = "") -> str:
    """Markdown for one model version; ``run`` is an ``mlflow.entities.Run``."""
    tags = dict(run.data.tags)
    params = dict(run.data.params)
    metrics = dict(run.data.metrics)
    lines = _head(name, version, run, tags, params, classes, manifest, model_uri)
    lines += ["", "## Recipe", ""] + _recipe(tags, params)
    splits = tuple(s for s in ("val", "test") if any(k.startswith(f"{s}_") for k in metrics))
    lines += ["", "## Metrics", ""] + (_metric_table(metrics, splits) if splits else
                                        ["_No evaluation metrics were recorded for this run._"])
    counts = (manifest or {}).get("counts")
    lines += ["", "## Per-class recall", ""] + (_recall_table(metrics, classes, splits, counts)
                                                  if splits else ["_Not measured._"])
    lines += ["", "## Confusion matrix (test)", ""] + _confusion(confusion_png, confusion)
    lines += ["", "## Known limits", ""]
    lines += [f"- {x}" for x in _limits(tags, params, manifest, classes, metrics)]
    return "\n".join(x for x in lines if x is not None) + "\n"


def _head(name: str, version: str | None, run: Any, tags: dict[str, str], params: dict[str, str],
          classes: list[str], manifest: dict[str, Any] | None, model_uri: str) -> list[str | None]:
    """Title, identity, intended use and data."""
    title = f"# Model card: {name}" + (f" v{version}" if version else "")
    lines: list[str | None] = [title, ""]
    lines += [
        f"- **Registry**: candidate of `{candidates_of(name)}`; served as `{served_of(name)}@{CHAMPION}` only "
        f"after a review copies it into `{served_of(name)}` (the review record is on both versions)"
        if name == candidates_of(name) else None,
        f"- **Source run**: `{run.info.run_id}` ({tags.get('mlflow.runName', '')}), "
        f"experiment `{run.info.experiment_id}`",
        f"- **Logged model**: `{model_uri}`" if model_uri else None,
        f"- **Variant**: `{tags.get('poster.variant', params.get('model.variant', '?'))}`",
        f"- **Config hash**: `{tags.get('poster.config_hash', '–')}`",
        f"- **Git commit**: `{tags.get('mlflow.source.git.commit', '–')}`",
        "",
        "## Intended use",
        "",
        "Classify the facial expression of one aligned face into: " + ", ".join(f"`{c}`" for c in classes)
        + f". Load with `mlflow.pyfunc.load_model(\"models:/{served_of(name)}@{CHAMPION}\")` and pass a DataFrame "
        "with an `image` column (aligned-face bytes or HWC uint8); raw photos go through "
        "`python -m pipeline.predict`, which detects and aligns the face first.",
        "",
        "## Data",
        "",
        f"- **Shards**: `{tags.get('poster.shards', '–')}`",
        f"- **Manifest content hash**: `{tags.get('poster.dataset_hash', '–') or '–'}`",
        f"- **Class order** (label index order): {', '.join(classes)}",
        f"- **Framing**: `{tags.get('poster.framing', 'project')}` — "
        + _framing_text(tags.get("poster.framing", "project"), manifest),
    ]
    if manifest:
        src = manifest.get("source")
        det = manifest.get("detector", {})
        if isinstance(src, dict):
            src = f"{src.get('name', '?')}" + (f" ({src['input']})" if src.get("input") else "")
        det_s = f"{det.get('name', '?')} {det.get('version', '') or ''}".strip() if isinstance(det, dict) else det
        lines.append(f"- **Source**: `{src}`; face detector/aligner: `{det_s}`")
        counts = manifest.get("counts", {})
        lines.append("- **Rows per split**: " + ", ".join(
            f"{s} {sum(v.values())}" for s, v in counts.items() if sum(v.values())))
    return lines


def _recipe(tags: dict[str, str], params: dict[str, str]) -> list[str]:
    lines: list[str] = []
    recipe = [(k, params[k]) for k in RECIPE_PARAMS if k in params and params[k] not in ("", "{}")]
    if recipe:
        lines += ["| setting | value |", "|---|---|"] + [f"| `{k}` | `{v}` |" for k, v in recipe]
        lines.append("")
        lines.append("The verbatim config is the run artifact `config.yaml`.")
    else:
        lines.append("_No training config recorded (imported model)._")
        for k in ("poster.official_checkpoint", "poster.official_sha256", "poster.dataset"):
            if k in tags:
                lines.append(f"- `{k}`: `{tags[k]}`")
    return lines


def _confusion(confusion_png: str | None, confusion: dict[str, Any] | None) -> list[str]:
    lines: list[str] = []
    if confusion_png:
        lines.append(f"![test confusion matrix]({confusion_png})")
    if confusion:
        lines += ["", "Rows true, columns predicted: " + ", ".join(confusion["classes"]), "", "```"]
        lines += [" ".join(f"{int(v):5d}" for v in row) for row in confusion["matrix"]]
        lines.append("```")
    if not confusion_png and not confusion:
        lines.append("_No test confusion matrix was logged._")
    return lines
