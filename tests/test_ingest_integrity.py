"""Orphan shards and safe overwrite (issue 14, items 3 and 4), on a real (small) Ray Data ingest
and real Parquet: a stray file in staging never reaches readers; readers follow the manifest's
shard list, not a directory listing; a copy that fails mid-way on an object-store-like
filesystem leaves the previous output readable."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline import schema as S
from pipeline.ingest import output as O

pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def stray_ingest(ray_session, tmp_path_factory, request):
    """A synthetic ingest during which a re-executed write task's first attempt (a copy of a
    real train shard under another name) is dropped into staging just before finalize."""
    from pipeline.ingest import IngestOptions, ingest

    out = tmp_path_factory.mktemp("stray") / "shards"
    injected: list[str] = []
    real = O.finalize

    def finalize_with_stray(summary, staging, dedupe):
        train = Path(staging) / "train"
        first = sorted(train.glob("*.parquet"))[0]
        stray = train / "part-0000stray0000.parquet"
        shutil.copy(first, stray)
        injected.append(stray.name)
        return real(summary, staging, dedupe)

    mp = pytest.MonkeyPatch()
    mp.setattr(O, "finalize", finalize_with_stray)
    try:
        report = ingest(IngestOptions("synthetic", str(out), per_class=4, seed=3, classes=7, progress=False))
    finally:
        mp.undo()
    return out, report, injected


def test_finalize_removes_a_stray_shard_and_readers_never_see_it(stray_ingest):
    from pipeline.config import load_config
    from pipeline.train.data import build_datasets
    from pipeline.evaluate import iter_split_batches

    out, report, injected = stray_ingest
    assert injected and report.reconciled
    manifest = S.read_manifest(str(out))
    assert manifest["strays_removed"] == 1
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*.parquet") if p.name != S.REJECTS}
    assert on_disk == {s["path"] for s in manifest["shards"]}  # nothing else was published
    assert not any(injected[0] in p for p in on_disk)
    # Readers count exactly the manifest's rows.
    train_rows = sum(manifest["counts"]["train"].values())
    cfg = load_config(None, [f"data.shards={out}", "data.val_fraction=0.0"])
    assert build_datasets(cfg, manifest)["train"].count() == train_rows


def test_readers_follow_the_manifest_not_the_folder(stray_ingest, tmp_path):
    """A file dropped into a published output later (a stray copy) is not read either."""
    from pipeline.config import load_config
    from pipeline.train.data import read_split
    from pipeline.evaluate import iter_split_batches

    out, _, _ = stray_ingest
    copy = tmp_path / "shards"
    shutil.copytree(out, copy)
    manifest = S.read_manifest(str(copy))
    test_file = sorted((copy / "test").glob("*.parquet"))[0]
    shutil.copy(test_file, copy / "test" / "zz-stray.parquet")
    test_rows = sum(manifest["counts"]["test"].values())
    assert sum(len(b["label"]) for b in iter_split_batches(str(copy), "test", 16)) == test_rows
    cfg = load_config(None, [f"data.shards={copy}"])
    assert read_split(str(copy), "test", cfg.data, manifest).count() == test_rows
    old = {k: v for k, v in manifest.items() if k != "shards"}
    (copy / S.MANIFEST).write_text(json.dumps(old))
    with pytest.raises(S.SchemaError, match="lists no shard files"):
        next(iter_split_batches(str(copy), "test", 16))


class _FailingCopies(pafs.FileSystemHandler):
    """An object-store-like pyarrow filesystem (no directory rename) over a local folder whose
    ``fail_after``-th ``copy_file`` raises, like a connection dropped mid-copy."""

    def __init__(self, fail_after: int | None):
        self.fs, self.fail_after, self.copies = pafs.LocalFileSystem(), fail_after, 0

    def copy_file(self, src, dest):
        self.copies += 1
        if self.fail_after is not None and self.copies >= self.fail_after:
            raise OSError(f"injected: connection reset while copying {src}")
        self.fs.copy_file(src, dest)

    def get_type_name(self): return "failing-copies"
    def normalize_path(self, path): return path
    def equals(self, other): return self is other
    def get_file_info(self, paths): return self.fs.get_file_info(paths)
    def get_file_info_selector(self, selector): return self.fs.get_file_info(selector)
    def create_dir(self, path, recursive): self.fs.create_dir(path, recursive=recursive)
    def delete_dir(self, path): self.fs.delete_dir(path)
    def delete_dir_contents(self, path, missing_dir_ok=False): self.fs.delete_dir_contents(path, missing_dir_ok)
    def delete_root_dir_contents(self): raise OSError("refused")
    def delete_file(self, path): self.fs.delete_file(path)
    def move(self, src, dest): raise OSError("object stores have no rename")
    def open_input_stream(self, path): return self.fs.open_input_stream(path)
    def open_input_file(self, path): return self.fs.open_input_file(path)
    def open_output_stream(self, path, metadata): return self.fs.open_output_stream(path)
    def open_append_stream(self, path, metadata): raise OSError("no append")


def _next_output(out: Path, staging: Path) -> None:
    """A second, different output in staging: the test rows only, under new shard names."""
    (staging / "test").mkdir(parents=True)
    manifest = S.read_manifest(str(out))
    shards = []
    for i, s in enumerate(x for x in manifest["shards"] if x["split"] == "test"):
        rel = f"test/part-new{i:012d}.parquet"
        shutil.copy(out / s["path"], staging / rel)
        shards.append({**s, "path": rel})
    manifest.update(shards=shards, counts={"test": manifest["counts"]["test"]}, content_hash="new")
    (staging / S.MANIFEST).write_text(json.dumps(manifest))
    pq.write_table(pq.read_table(out / S.REJECTS).slice(0, 0), staging / S.REJECTS)


def test_failed_object_store_copy_keeps_the_old_output_readable(stray_ingest, tmp_path):
    from pipeline.evaluate import iter_split_batches

    src, _, _ = stray_ingest
    out, staging = tmp_path / "out", tmp_path / ".out.ingest-x"
    shutil.copytree(src, out)
    _next_output(out, staging)
    before = S.read_manifest(str(out))
    before_files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    rejects_before = pq.read_table(out / S.REJECTS).num_rows
    train_rows = sum(before["counts"]["train"].values())

    failing = pafs.PyFileSystem(_FailingCopies(fail_after=2))  # 1 shard copied, then it fails
    with pytest.raises(OSError, match="injected"):
        O.copy_tree(failing, str(staging), str(out))
    assert S.read_manifest(str(out)) == before
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == before_files
    assert pq.read_table(out / S.REJECTS).num_rows == rejects_before
    assert sum(len(b["label"]) for b in iter_split_batches(str(out), "train", 64)) == train_rows

    O.copy_tree(pafs.PyFileSystem(_FailingCopies(fail_after=None)), str(staging), str(out))
    after = S.read_manifest(str(out))
    assert after["content_hash"] == "new" and "train" not in after["counts"]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted([S.MANIFEST, S.REJECTS] + [s["path"] for s in after["shards"]])


def test_overwrite_refuses_a_folder_that_is_not_an_ingest(tmp_path):
    from pipeline.ingest.core import OutputExistsError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("do not delete")
    with pytest.raises(OutputExistsError, match="not an earlier ingest output"):
        O.check_target(str(tmp_path / "mine"), True, None)
    assert (tmp_path / "mine" / "thesis.tex").is_file()
