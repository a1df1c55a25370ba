"""The output folder: staging, duplicate resolution, rejects, manifest, atomic publish.

Everything is written into a hidden staging folder next to the output (`.<name>.ingest-<id>`),
and only a complete, reconciled result is renamed onto `<out>`. `_manifest.json` is written last,
so its presence marks a completed ingest even on object stores, where the final step is a copy.

Overwrite never loses the previous complete output: locally the old folder is renamed aside and
only deleted once the new one is in place; on object stores the new shards (unique names) are
copied beside the old ones, the manifest, which readers take the shard list from, is replaced
last, and only then are the old files deleted. A failed copy leaves the old manifest and shards.
`--overwrite` only replaces an earlier ingest output (a folder with `_manifest.json`).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from pipeline import schema as S
from pipeline.ingest.errors import IngestError, OutputExistsError
from pipeline.ingest.fill import border_fill_stats

# Which copy of a duplicated image is kept: the most held-out split wins, so test data never
# leaks into train through a second copy.
SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2}


def _is_local(fs) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def _uri_like(template: str, path: str) -> str:
    """`path` (inside the filesystem of `template`) in the same form as `template`."""
    if "://" not in template:
        return path
    scheme = template.split("://", 1)[0]
    return f"{scheme}://{path}"


def check_target(out: str, overwrite: bool, input: str | None) -> None:
    fs, path = S.filesystem(out)
    info = fs.get_file_info(path)
    if input and "://" not in input and _is_local(fs):
        src = os.path.realpath(input)
        dst = os.path.realpath(path)
        if src == dst or src.startswith(dst + os.sep):
            raise ValueError(f"--out {out} contains the input {input}; choose another output")
    if info.type == pafs.FileType.NotFound:
        return
    if info.type != pafs.FileType.Directory:
        raise OutputExistsError(f"{out} exists and is not a folder")
    if not fs.get_file_info(pafs.FileSelector(path)):
        return  # an empty folder is as good as none
    done = fs.get_file_info(S.join(path, S.MANIFEST)).type == pafs.FileType.File
    if overwrite and done:
        return
    if overwrite:
        raise OutputExistsError(f"{out} holds files but no {S.MANIFEST}, so it is not an earlier ingest "
                                "output; --overwrite only replaces those. Choose another --out or empty it")
    what = "a completed ingest" if done else "files (not a completed ingest)"
    raise OutputExistsError(f"{out} already holds {what}; pass --overwrite to replace it")


def make_staging(out: str) -> str:
    fs, path = S.filesystem(out)
    parent, name = path.rstrip("/").rsplit("/", 1) if "/" in path.rstrip("/") else ("", path)
    staging = S.join(parent, f".{name}.ingest-{uuid.uuid4().hex[:8]}") if parent else f".{name}.ingest"
    fs.create_dir(staging, recursive=True)
    return _uri_like(out, staging)


def remove(uri: str) -> None:
    fs, path = S.filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


@dataclass
class Result:
    staging: str
    written: int
    rejected: int
    kept: pa.Table                  # summary rows of the accepted samples
    rejects: pa.Table               # REJECTS_SCHEMA
    rejects_by_reason: dict[str, int]
    duplicates_within_split: int
    landmarks_from: dict[str, int]
    border_fill: dict[str, float] = field(default_factory=dict)
    shards: list[dict] = field(default_factory=list)
    strays_removed: list[str] = field(default_factory=list)


def resolve_duplicates(rows: list[dict], dedupe: bool) -> tuple[dict[int, tuple[str, str]], int]:
    """Indices of accepted rows to drop -> (reason, detail), and the duplicates kept.

    A group of rows with one sample_id keeps one copy in its most held-out split (ties: the
    smallest source_ref); copies in other splits are rejected as `duplicate_across_splits`.
    Further copies in the kept split are rejected as `duplicate` only with `dedupe`.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[r["sample_id"]].append(i)
    drop, within = {}, 0
    for idx in groups.values():
        if len(idx) < 2:
            continue
        idx.sort(key=lambda i: (SPLIT_PRIORITY.get(rows[i]["split"], 9), rows[i]["source_ref"]))
        keep = rows[idx[0]]
        for i in idx[1:]:
            detail = f"same image as {keep['source_ref']} ({keep['split']})"
            if rows[i]["split"] != keep["split"]:
                drop[i] = ("duplicate_across_splits", detail)
            elif dedupe:
                drop[i] = ("duplicate", detail)
            else:
                within += 1
    return drop, within


def finalize(summary: pa.Table, staging: str, dedupe: bool) -> Result:
    """Apply duplicate rejection to the staged shards and gather the rejects."""
    fs, base = S.filesystem(staging)
    rows = summary.to_pylist()
    accepted = [r for r in rows if not r["reason"]]
    rejected = [r for r in rows if r["reason"]]
    drop, within = resolve_duplicates(accepted, dedupe)
    by_file: dict[str, set[int]] = defaultdict(set)
    for i, (reason, detail) in drop.items():
        r = accepted[i]
        by_file[r["file"]].add(r["row"])
        rejected.append({**r, "reason": reason, "detail": detail})
    strays = check_staged_files(fs, base, {r["file"] for r in accepted})
    for rel, rm in by_file.items():
        _drop_rows(fs, S.join(base, rel), rm)
    kept = [r for i, r in enumerate(accepted) if i not in drop]
    shards = Counter((r["file"], r["split"]) for r in kept)
    rejected.sort(key=lambda r: (r["source_ref"], r["reason"]))
    rejects = pa.table({k: [r[k] or "" for r in rejected] for k in S.REJECTS_SCHEMA.names},
                       schema=S.REJECTS_SCHEMA)
    return Result(
        staging=staging, written=len(kept), rejected=len(rejected),
        kept=pa.Table.from_pylist(kept, schema=summary.schema), rejects=rejects,
        rejects_by_reason=dict(Counter(r["reason"] for r in rejected)),
        duplicates_within_split=within,
        landmarks_from=dict(Counter(r["landmarks_from"] for r in kept)),
        border_fill=border_fill_stats([r["border_fill"] or 0.0 for r in kept]),
        shards=[{"path": f, "split": s, "rows": n} for (f, s), n in sorted(shards.items())],
        strays_removed=strays)


def check_staged_files(fs, base: str, summarised: set[str]) -> list[str]:
    """Staging must hold exactly the shards the summary names: a file no summary row points at
    (a re-executed write task's first attempt) is removed; a named file that is missing fails."""
    found = {i.path[len(base):].lstrip("/") for i in fs.get_file_info(pafs.FileSelector(base, recursive=True))
             if i.type == pafs.FileType.File}
    missing = sorted(summarised - found)
    if missing:
        raise IngestError(f"staging {base} lacks {len(missing)} shard(s) the write tasks reported: {missing[:5]}")
    strays = sorted(found - summarised)
    for rel in strays:
        fs.delete_file(S.join(base, rel))
    if strays:
        import logging

        logging.getLogger(__name__).warning("removed %d stray file(s) from staging: %s", len(strays), strays[:5])
    return strays


def _drop_rows(fs, path: str, rows: set[int]) -> None:
    table = pq.read_table(path, filesystem=fs)
    mask = pa.array([i not in rows for i in range(table.num_rows)])
    table = table.filter(mask)
    if table.num_rows == 0:
        fs.delete_file(path)
    else:
        pq.write_table(table.cast(S.shard_schema(table.schema.names)), path, filesystem=fs,
                       compression="zstd")


def content_hash(kept: pa.Table, classes: list[str]) -> str:
    """Order-independent hash of what was written: classes + (split, sample_id, label, digest)."""
    lines = sorted(f"{r['split']}\t{r['sample_id']}\t{r['label']}\t{r['digest']}"
                   for r in kept.select(["split", "sample_id", "label", "digest"]).to_pylist())
    h = hashlib.sha256(json.dumps(classes).encode())
    for line in lines:
        h.update(line.encode() + b"\n")
    return h.hexdigest()


def build_manifest(result: Result, *, classes: list[str], class_order: str, source: dict,
                   detector: dict, read: int) -> dict:
    counts: dict[str, dict[str, int]] = {}
    per = Counter((r["split"], r["label"]) for r in result.kept.select(["split", "label"]).to_pylist())
    for split in S.SPLITS:
        if any(s == split for s, _ in per):
            counts[split] = {c: per.get((split, i), 0) for i, c in enumerate(classes)}
    return {
        "schema_version": S.SCHEMA_VERSION,
        "classes": list(classes),
        "class_order": class_order,
        "counts": counts,
        "totals": {s: sum(c.values()) for s, c in counts.items()},
        "source": source,
        "detector": detector,
        "read": read,
        "written": result.written,
        "rejected": result.rejected,
        "rejects_by_reason": dict(sorted(result.rejects_by_reason.items())),
        "duplicates_within_split": result.duplicates_within_split,
        "landmarks_from": result.landmarks_from,
        "border_fill": result.border_fill,
        "shards": result.shards,
        "strays_removed": len(result.strays_removed),
        "content_hash": content_hash(result.kept, list(classes)),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def save_failed_rejects(result: Result, out: str) -> str:
    """On a failed ingest, keep the rejects list beside the (unpublished) output."""
    fs, path = S.filesystem(out)
    target = path.rstrip("/") + ".rejects.parquet"
    pq.write_table(result.rejects, target, filesystem=fs)
    return _uri_like(out, target)


def publish(staging: str, out: str, manifest: dict, result: Result, fs=None) -> None:
    """Write rejects and manifest into staging (manifest last), then move staging onto `out`.
    ``fs`` overrides the filesystem both paths are resolved in (tests inject a failing one)."""
    if fs is None:
        fs, spath = S.filesystem(staging)
        _, opath = S.filesystem(out)
    else:
        spath, opath = staging, out
    pq.write_table(result.rejects, S.join(spath, S.REJECTS), filesystem=fs)
    with fs.open_output_stream(S.join(spath, S.MANIFEST)) as f:
        f.write(json.dumps(manifest, indent=2).encode())
    if _is_local(fs):
        old = None
        if os.path.exists(opath):
            old = f"{opath.rstrip('/')}.old-{uuid.uuid4().hex[:8]}"
            os.rename(opath, old)
        try:
            os.rename(spath, opath)
        except BaseException:
            if old:
                os.rename(old, opath)  # put the previous complete output back
            raise
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return
    copy_tree(fs, spath, opath)
    fs.delete_dir(spath)


def _files(fs, root: str) -> list[str]:
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    return [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if i.type == pafs.FileType.File]


def copy_tree(fs, src: str, dst: str) -> None:
    """Object stores have no directory rename: copy the new files beside the old output, switch
    by replacing the manifest (readers follow its shard list), then delete the old files. On a
    failure the copied files are removed and the old output is left as it was."""
    old = set(_files(fs, dst))
    rejects = S.join(dst, S.REJECTS)
    # the rejects list is the one fixed name besides the manifest: it waits under a new name
    # until the switch, so a failed copy never replaces the old output's list
    staged_rejects = S.join(dst, f"{S.REJECTS}.next-{uuid.uuid4().hex[:8]}")
    files = sorted(p for p in _files(fs, src) if not p.endswith((S.MANIFEST, S.REJECTS)))
    copied: list[str] = []
    try:
        for p in files:
            target = S.join(dst, p[len(src):])
            fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            fs.copy_file(p, target)
            copied.append(target)
        if fs.get_file_info(S.join(src, S.REJECTS)).type == pafs.FileType.File:
            fs.copy_file(S.join(src, S.REJECTS), staged_rejects)
            copied.append(staged_rejects)
        fs.copy_file(S.join(src, S.MANIFEST), S.join(dst, S.MANIFEST))  # the switch
    except BaseException:
        for t in copied:
            if t not in old:
                _quiet_delete(fs, t)
        raise
    if staged_rejects in copied:
        fs.copy_file(staged_rejects, rejects)
        _quiet_delete(fs, staged_rejects)
    new = {S.join(dst, p[len(src):]) for p in files} | {S.join(dst, S.MANIFEST), rejects}
    for p in sorted(old - new):
        _quiet_delete(fs, p)


def _quiet_delete(fs, path: str) -> None:
    try:
        fs.delete_file(path)
    except (FileNotFoundError, OSError):
        pass
