"""Class-sorted shards must still give mixed batches: row order, val carve by group, sampler.

The shard set is written class-sorted on purpose (7 balanced classes, one label run after the
other), the layout that once gave one-class batches. Each row's image is a flat PNG whose colour
encodes the row's index, so the order of rows can be read back from the decoded batches.
"""
from __future__ import annotations

import io
import json
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import schema as S
from pipeline.config import load_config
from pipeline.train.data import balanced_weights, batch_augmenter, build_datasets, carve_fraction, group_column, resample, val_carve_tag
from pipeline.train.epochs import CachedEpochs, EpochBatches
from pipeline.metrics import BatchMix

CLASSES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]
PER_CLASS = 40  # 280 rows, 2 shards of 140 (each a few label runs)


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), (i % 256, i // 256, 7), np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def sorted_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sorted") / "shards"
    (root / "train").mkdir(parents=True)
    n = PER_CLASS * len(CLASSES)
    labels = np.repeat(np.arange(len(CLASSES)), PER_CLASS)  # class-sorted
    rows = {
        S.SAMPLE_ID: [f"{(i * 2654435761) % 16**32:032x}" for i in range(n)],
        S.IMAGE: [_png(i) for i in range(n)], S.LANDMARK_CROP: [_png(i) for i in range(n)],
        S.LANDMARKS: [[0.5] * (2 * S.NUM_LANDMARKS)] * n, S.LABEL: labels.tolist(),
        S.LABEL_NAME: [CLASSES[k] for k in labels], S.SPLIT: ["train"] * n,
        S.SOURCE: ["test"] * n, S.SOURCE_REF: [f"{CLASSES[k]}/p{i // 5}_{i}.png" for i, k in enumerate(labels)],
    }
    table = pa.table(rows).cast(S.SCHEMA)
    shards = []
    for j, part in enumerate((table.slice(0, n // 2), table.slice(n // 2))):
        pq.write_table(part, root / "train" / f"part-{j}.parquet")
        shards.append({"path": f"train/part-{j}.parquet", "split": "train", "rows": part.num_rows})
    manifest = {"schema_version": S.SCHEMA_VERSION, "classes": CLASSES, "source": {"name": "test"},
                "counts": {"train": {c: PER_CLASS for c in CLASSES}}, "detector": {}, "read": n,
                "written": n, "rejected": 0, "content_hash": "x", "shards": shards}
    (root / S.MANIFEST).write_text(json.dumps(manifest))
    return root


def _train(shards: Path, *overrides: str, cached: bool = False):
    cfg = load_config(None, [f"data.shards={shards}", "data.val_fraction=0", "data.random_erasing=0",
                             "data.read_rows_per_block=20", *overrides])
    return cfg, build_datasets(cfg, json.loads((shards / S.MANIFEST).read_text()), cached=cached)["train"]


def _rank_batches(cfg, it, rank: int, cached: bool) -> EpochBatches | CachedEpochs:
    """What pipeline.train.worker gives a rank: streamed epochs, or rows held in the worker."""
    d = cfg.data
    if cached:
        return CachedEpochs(it, 16, 2, batch_augmenter(d), seed=d.seed, rank=rank)
    return EpochBatches(it, 16, 2, shuffle_buffer=d.shuffle_buffer, seed=d.seed, rank=rank)


def _ids(batch) -> list[int]:
    px = batch["image"][:, 0, 0].numpy().astype(int)
    return (px[:, 0] + 256 * px[:, 1]).tolist()


def _epochs(batches: EpochBatches, n: int) -> list[list[dict]]:
    out = []
    for _ in range(n):
        out.append([{"ids": _ids(b), "label": b["label"].numpy()} for b in batches.epoch()])
    return out


def _mix(epoch: list[dict]) -> float:
    mix = BatchMix(len(CLASSES))
    for b in epoch:
        mix.add(b["label"])
    return mix.metrics()["train_batch_classes"]


@pytest.mark.parametrize("mode,cached", [("full", False), ("blocks", False), ("files", True)])
def test_single_worker_epochs_are_mixed_and_reordered(ray_session, sorted_shards, mode, cached):
    """Streamed, a row shuffle in Ray Data mixes the class-sorted rows; held in the worker
    (data.worker_cache), its own permutation does, even after a file-order-only read."""
    cfg, ds = _train(sorted_shards, f"data.shuffle={mode}", cached=cached)
    batches = _rank_batches(cfg, ds.iterator(), 0, cached)
    try:
        epochs = _epochs(batches, 2)
    finally:
        batches.close()
    orders = [[i for b in e for i in b["ids"]] for e in epochs]
    for order, e in zip(orders, epochs):
        assert len(order) == len(set(order)) == 16 * (len(CLASSES) * PER_CLASS // 16)
        assert _mix(e) >= 5, f"mean distinct labels per batch {_mix(e):.2f}"
    assert orders[0] != orders[1], "the row order must change between epochs"


def test_file_order_only_reproduces_one_class_batches(ray_session, sorted_shards):
    """The old behaviour (file shuffle, no row shuffle) on the same shards: the bug this guards."""
    _, ds = _train(sorted_shards, "data.shuffle=files", "data.shuffle_buffer=0")
    batches = EpochBatches(ds.iterator(), 16, 2)
    try:
        (epoch,) = _epochs(batches, 1)
    finally:
        batches.close()
    assert _mix(epoch) < 2.5


@pytest.mark.parametrize("cached", [False, True], ids=["streamed", "worker_cache"])
def test_two_ranks_get_mixed_disjoint_equal_batches_each_epoch(ray_session, sorted_shards, cached):
    """streaming_split(equal=True), what Ray Train's DataConfig gives each DDP rank; defaults
    (data.shuffle=auto: a full row shuffle on a set this small), streamed every epoch or read
    once and held by each rank (data.worker_cache)."""
    cfg, ds = _train(sorted_shards, cached=cached)
    its = ds.streaming_split(2, equal=True)
    got: dict[int, list] = {}

    def consume(rank: int) -> None:
        b = _rank_batches(cfg, its[rank], rank, cached)
        try:
            got[rank] = _epochs(b, 2)
        finally:
            b.close()

    threads = [threading.Thread(target=consume, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert set(got) == {0, 1}
    for epoch in (0, 1):
        e0, e1 = got[0][epoch], got[1][epoch]
        assert len(e0) == len(e1) > 0, "equal steps per rank (else DDP deadlocks)"
        ids0, ids1 = ({i for b in e for i in b["ids"]} for e in (e0, e1))
        assert not ids0 & ids1
        for e in (e0, e1):
            assert _mix(e) >= 5, f"rank mean distinct labels per batch {_mix(e):.2f}"
    for rank in (0, 1):
        first, second = ([i for b in got[rank][k] for i in b["ids"]] for k in (0, 1))
        assert first != second


def test_group_carve_keeps_a_group_on_one_side_and_is_reproducible():
    rng = np.random.default_rng(0)
    groups = np.array([f"person_{k}" for k in rng.integers(0, 60, 2000)], dtype=object)
    ids = np.array([f"{x:016x}" + "0" * 16 for x in rng.integers(0, 2**63, 2000)], dtype=object)
    batch = {"sample_id": ids, "group": groups}
    frac = carve_fraction(batch, "group")
    is_val = frac < 0.2
    for g in set(groups):
        sides = set(is_val[groups == g].tolist())
        assert len(sides) == 1, f"{g} straddles train and val"
    assert 0 < is_val.mean() < 0.5
    shuffled = rng.permutation(len(ids))
    again = carve_fraction({k: v[shuffled] for k, v in batch.items()}, "group")
    assert np.array_equal(again, frac[shuffled]), "the carve depends only on the group"
    # by sample id (no group column) the same people do straddle: what the group key fixes
    by_id = carve_fraction(batch) < 0.2
    assert any(len(set(by_id[groups == g].tolist())) == 2 for g in set(groups))


def test_val_carve_is_independent_of_the_ingest_test_split():
    """Ingest --test-fraction 0.2 keeps the rows whose hash digits 0-7 are >= 0.2 in train; a
    carve on those same digits would find no val rows at val_fraction 0.15."""
    import hashlib

    from pipeline.ingest.stage import _hash_split

    rng = np.random.default_rng(2)
    ids = [hashlib.sha256(rng.bytes(8)).hexdigest()[:32] for _ in range(3000)]
    groups = [f"p{k}" for k in rng.integers(0, 300, 3000)]
    for key, column in ((ids, ""), (groups, "group")):
        train = [i for i, (s, g) in enumerate(zip(ids, groups))
                 if _hash_split(s, 0.2, g if column else "") == "train"]
        batch = {"sample_id": np.array(ids, dtype=object)[train],
                 "group": np.array(groups, dtype=object)[train]}
        share = (carve_fraction(batch, column) < 0.15).mean()
        assert 0.08 < share < 0.22, (column, share)


def test_balanced_sampler_evens_out_an_imbalanced_stream():
    manifest = {"counts": {"train": {"a": 900, "b": 90, "c": 10}}}
    w = balanced_weights(manifest, ["a", "b", "c"])
    labels = np.repeat([0, 1, 2], [900, 90, 10])
    got = Counter()
    rng = np.random.default_rng(1)
    for _ in range(20):
        got.update(resample({"label": labels, "x": np.arange(1000)}, w, rng)["label"].tolist())
    total = sum(got.values())
    assert abs(total / 20 - 1000) < 40, "the epoch keeps about N rows"
    for k in range(3):
        assert abs(got[k] / total - 1 / 3) < 0.03, got


def _label_runs(labels: list[int]) -> int:
    return 1 + sum(a != b for a, b in zip(labels, labels[1:]))


def test_ingest_of_a_class_sorted_tree_writes_mixed_shards_split_by_person(ray_session, tmp_path):
    """A <label>/ tree (the layout most users bring) through the real detector: rows in a seeded
    random order in every shard, a person never in both train and test, the same content hash
    whatever the row order."""
    import cv2

    from pipeline.ingest import IngestOptions, ingest
    from pipeline.synth import generate

    raw = tmp_path / "raw"
    for k, label in enumerate(CLASSES):
        for j in range(10):
            img = generate(label, j, seed=3).image
            p = raw / label / f"Person_{j}_{k:04d}.jpg"  # person j shows every expression
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes())
    regex = r"([^/]+)_[0-9]+[.]jpg$"
    reports = [ingest(IngestOptions("folder", str(tmp_path / f"out{seed}"), str(raw), test_fraction=0.3,
                                    group_regex=regex, rows_per_shard=32, seed=seed, progress=False))
               for seed in (0, 1)]
    assert reports[0].content_hash == reports[1].content_hash
    orders = []
    for seed in (0, 1):
        tables = [pq.read_table(f) for f in sorted((tmp_path / f"out{seed}").glob("*/*.parquet"))]
        for t in tables:
            labels = t.column("label").to_pylist()
            if len(labels) >= 14:
                assert _label_runs(labels) >= len(labels) / 2, f"class-sorted shard: {labels}"
        groups = {split: {g for t in tables if t.column("split")[0].as_py() == split
                          for g in t.column(S.GROUP).to_pylist()} for split in ("train", "test")}
        assert groups["train"] and groups["test"] and not groups["train"] & groups["test"]
        assert groups["train"] | groups["test"] == {f"Person_{j}" for j in range(10)}
        orders.append([r for t in tables for r in t.column(S.SOURCE_REF).to_pylist()])
    assert sorted(orders[0]) == sorted(orders[1]) and orders[0] != orders[1]


def test_group_column_must_exist(ray_session, sorted_shards):
    with pytest.raises(ValueError, match="re-ingest with --group-regex"):
        _train(sorted_shards, "data.val_fraction=0.2", "data.group_column=group")


def _copy(shards: Path, out: Path, groups: bool) -> Path:
    """A copy of ``shards`` with sha256 sample ids (as the ingest writes them: the carve reads
    their hex digits) and, with ``groups``, the ``group`` column an ingest --group-regex writes
    (p<k>: 5 rows a person, read from source_ref)."""
    import hashlib
    import shutil

    shutil.copytree(shards, out)
    for f in sorted((out / "train").glob("*.parquet")):
        t = pq.read_table(f)
        ids = [hashlib.sha256(i.encode()).hexdigest()[:32] for i in t.column(S.SAMPLE_ID).to_pylist()]
        t = t.set_column(t.schema.get_field_index(S.SAMPLE_ID), S.SAMPLE_ID, pa.array(ids, pa.string()))
        if groups:
            people = [ref.split("/")[1].split("_")[0] for ref in t.column(S.SOURCE_REF).to_pylist()]
            t = t.append_column(S.GROUP_FIELD, pa.array(people, pa.string()))
        pq.write_table(t.cast(S.shard_schema(t.column_names)), f)
    return out


def _val_groups(shards: Path, *overrides: str) -> tuple[set[str], set[str]]:
    """(groups of the val rows, groups of the train rows) of build_datasets' carve."""
    cfg = load_config(None, [f"data.shards={shards}", "data.val_fraction=0.3", *overrides])
    ds = build_datasets(cfg, json.loads((shards / S.MANIFEST).read_text()))
    val_ids = {r[S.SAMPLE_ID] for r in ds["val"].take_all()}
    rows = pq.read_table(shards / "train", columns=[S.SAMPLE_ID, S.SOURCE_REF]).to_pylist()
    person = {r[S.SAMPLE_ID]: r[S.SOURCE_REF].split("/")[1].split("_")[0] for r in rows}
    return ({person[i] for i in val_ids}, {p for i, p in person.items() if i not in val_ids})


def test_val_carve_is_by_person_by_default_when_the_ingest_wrote_groups(ray_session, sorted_shards, tmp_path):
    """data.group_column=auto (the default): shards with a group column are carved by person with
    no flag (checked on the rows build_datasets carves); without one, by sample id; "" forces the
    sample id; a named column must exist."""
    grouped = _copy(sorted_shards, tmp_path / "grouped", groups=True)
    val, train = _val_groups(grouped)
    assert val and train and not val & train, f"people on both sides: {sorted(val & train)}"
    plain = _copy(sorted_shards, tmp_path / "plain", groups=False)
    assert [group_column(str(grouped), c) for c in ("auto", "", "group")] == ["group", "", "group"]
    assert group_column(str(plain), "auto") == ""
    manifest = json.loads((grouped / S.MANIFEST).read_text())  # what open_run tags the run with
    carves = [val_carve_tag(load_config(None, [f"data.shards={s}", *o]).data, manifest)
              for s, o in ((grouped, []), (plain, []), (grouped, ["data.val_fraction=0"]))]
    assert carves == ["group:group", "sample_id", "none"]
    with pytest.raises(ValueError, match="no such column"):
        group_column(str(plain), "person")


def test_worker_cache_holds_small_sets_only_and_never_freezes_the_balanced_draw():
    from pipeline.config import ConfigError
    from pipeline.train.data import ROW_BYTES, worker_cache

    def manifest(rows: int) -> dict:
        return {"counts": {"train": {"a": rows // 2, "b": rows - rows // 2}}}

    d = load_config(None, []).data
    fits = d.worker_cache_mb * 2**20 // ROW_BYTES  # rows one worker may hold decoded
    assert worker_cache(d, manifest(fits), 1) and not worker_cache(d, manifest(fits + 2), 1)
    assert not worker_cache(d, manifest(2 * fits), 2), "every rank holds all rows (pipeline.train.held)"
    capped = load_config(None, [f"data.max_train_rows={fits}"]).data
    assert worker_cache(capped, manifest(10 * fits), 1)
    balanced = load_config(None, ["data.sampler=balanced"]).data
    assert not worker_cache(balanced, manifest(100), 1), "the balanced draw is redone every epoch"
    assert not worker_cache(load_config(None, ["data.worker_cache=never"]).data, manifest(100), 1)
    assert worker_cache(load_config(None, ["data.worker_cache=always"]).data, manifest(10 * fits), 1)
    with pytest.raises(ConfigError, match="freeze data.sampler=balanced"):
        load_config(None, ["data.worker_cache=always", "data.sampler=balanced"])
    with pytest.raises(ConfigError, match="worker_cache must be auto, always or never"):
        load_config(None, ["data.worker_cache=sometimes"])
