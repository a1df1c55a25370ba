"""Schema checks, manifest reading, duplicate policy and output-folder rules (no Ray)."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyarrow import fs as pafs

from pipeline import schema as S
from pipeline.ingest import OutputExistsError
from pipeline.ingest import output as O
from pipeline.ingest.stage import SUMMARY_SCHEMA


def _row(ref, split, sid, label=0):
    return {"source_ref": ref, "split": split, "sample_id": sid, "label": label, "file": "f", "row": 0,
            "digest": sid, "reason": "", "detail": "", "landmarks_from": "known"}


def test_validate_schema_names_every_problem():
    S.validate_schema(S.SCHEMA, "contract")
    bad = pa.schema([f for f in S.SCHEMA if f.name not in ("image", "label")]
                    + [pa.field("label", pa.int64())])
    with pytest.raises(S.SchemaError) as e:
        S.validate_schema(bad, "train shards")
    msg = str(e.value)
    assert "train shards" in msg and "missing column 'image'" in msg and "'label' is int64" in msg
    # a table works too, and large_* string/binary variants are accepted
    t = pa.table({f.name: pa.array([], f.type) for f in S.SCHEMA}).cast(
        pa.schema([f.with_type(pa.large_binary()) if f.name == "image" else f for f in S.SCHEMA]))
    S.validate_schema(t)


def test_manifest_round_trip_and_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no _manifest.json"):
        S.read_manifest(str(tmp_path))
    m = {k: 0 for k in S.REQUIRED_MANIFEST_KEYS} | {"schema_version": 1, "classes": ["happy"]}
    (tmp_path / S.MANIFEST).write_text(json.dumps(m))
    assert S.read_manifest(str(tmp_path)) == m
    assert S.read_manifest(f"file://{tmp_path}") == m  # URIs go through pyarrow filesystems
    (tmp_path / S.MANIFEST).write_text(json.dumps({**m, "schema_version": 2}))
    with pytest.raises(S.SchemaError, match="schema_version 2"):
        S.read_manifest(str(tmp_path))
    (tmp_path / S.MANIFEST).write_text(json.dumps({"schema_version": 1}))
    with pytest.raises(S.SchemaError, match="missing keys"):
        S.read_manifest(str(tmp_path))


def test_duplicates_keep_the_most_held_out_copy():
    rows = [_row("a", "train", "x"), _row("b", "test", "x"), _row("c", "val", "x"),
            _row("d", "train", "y"), _row("e", "train", "y"), _row("f", "test", "z")]
    drop, within = O.resolve_duplicates(rows, dedupe=False)
    assert drop == {0: ("duplicate_across_splits", "same image as b (test)"),
                    2: ("duplicate_across_splits", "same image as b (test)")}
    assert within == 1
    drop, within = O.resolve_duplicates(rows, dedupe=True)
    assert drop[4] == ("duplicate", "same image as d (train)") and within == 0


def test_content_hash_ignores_row_order():
    rows = [_row("a", "train", "x"), _row("b", "test", "y", 1)]
    t1 = pa.Table.from_pylist(rows, schema=SUMMARY_SCHEMA)
    t2 = pa.Table.from_pylist(rows[::-1], schema=SUMMARY_SCHEMA)
    assert O.content_hash(t1, ["a", "b"]) == O.content_hash(t2, ["a", "b"])
    assert O.content_hash(t1, ["a", "b"]) != O.content_hash(t1, ["b", "a"])  # class order matters


def test_output_rules(tmp_path):
    O.check_target(str(tmp_path / "new"), False, None)      # absent: fine
    (tmp_path / "empty").mkdir()
    O.check_target(str(tmp_path / "empty"), False, None)    # empty folder: fine
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "x").write_text("left over")
    with pytest.raises(OutputExistsError, match="not a completed ingest"):
        O.check_target(str(tmp_path / "half"), False, None)
    with pytest.raises(OutputExistsError, match="not an earlier ingest output"):
        O.check_target(str(tmp_path / "half"), True, None)  # --overwrite only replaces an ingest
    (tmp_path / "half" / S.MANIFEST).write_text("{}")
    O.check_target(str(tmp_path / "half"), True, None)      # --overwrite of an earlier ingest
    with pytest.raises(ValueError, match="contains the input"):
        O.check_target(str(tmp_path), True, str(tmp_path / "half"))


def test_copy_tree_writes_the_manifest_last(tmp_path):
    """The object-store publish path (no directory rename) copies the completion marker last."""
    fs = pafs.LocalFileSystem()
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "train").mkdir(parents=True)
    pq.write_table(pa.table({"a": [1]}), src / "train" / "part-1.parquet")
    (src / S.MANIFEST).write_text("{}")
    (src / "a_first.txt").write_text("x")
    copied = []
    orig = fs.copy_file

    class Spy:
        def __getattr__(self, name):
            return getattr(fs, name)

        def copy_file(self, a, b):
            copied.append(b.rsplit("/", 1)[-1])
            orig(a, b)

    O.copy_tree(Spy(), str(src), str(dst))
    assert copied[-1] == S.MANIFEST and len(copied) == 3
    assert (dst / "train" / "part-1.parquet").is_file()
