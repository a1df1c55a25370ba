"""Batch prediction with Ray Data (pipeline.predict.batch) on real faces plus bad files: one row per
input, read = predicted + rejected, reasons per file, and the same labels as the few-files mode.
Real Ray (session fixture), real detector, real Parquet; the model is an untrained POSTER-V2-tiny."""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("mediapipe")
pytestmark = pytest.mark.ray

CLASSES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]
N_FACES = 5


@pytest.fixture(scope="module")
def v2_weights(tmp_path_factory) -> Path:
    import torch

    import poster_model
    from pipeline.artifact.files import save_weights

    torch.manual_seed(0)
    cfg = poster_model.variant_config("v2_tiny", len(CLASSES))
    path = tmp_path_factory.mktemp("batch-model") / "weights.pt"
    return save_weights(path, poster_model.build_poster(cfg).state_dict(), cfg, CLASSES, {"bgr": False, "use_crop": True})


@pytest.fixture(scope="module")
def folder(tmp_path_factory, shared_dir) -> Path:
    d = tmp_path_factory.mktemp("inbox")
    src = shared_dir / "data" / "muxspace_dev"
    with open(src / "labels.csv") as f:
        rows = list(csv.DictReader(f))[:N_FACES]
    for r in rows:
        (d / Path(r["path"]).name).write_bytes((src / r["path"]).read_bytes())
    (d / "sub").mkdir()
    (d / "sub" / "gone.jpg").symlink_to(d / "never_there.jpg")  # unreadable: a dangling link
    (d / "notes.jpg").write_text("not a picture\n")  # not an image, despite its name
    rng = np.random.default_rng(0)
    cv2.imwrite(str(d / "sub" / "wall.png"), cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (0, 0), 3))
    (d / "README.txt").write_text("no image extension: still an input, rejected\n")
    return d


def test_folder_with_bad_files_reconciles_and_matches_few_files_mode(ray_session, folder, v2_weights, tmp_path, capsys):
    from pipeline.predict.batch import list_inputs
    from pipeline.predict import predict_files
    from pipeline.predict.cli import main

    out = tmp_path / "preds.parquet"
    rc = main(["--input-dir", str(folder), "--out", str(out), "--model", str(v2_weights),
               "--batch-size", "3", "--actors", "2", "--cpus-per-actor", "0.5"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    table = pq.read_table(out).to_pandas().sort_values("index")
    paths = list_inputs(folder)
    assert str(folder / "README.txt") in paths and len(paths) == N_FACES + 4  # every file is an input
    assert list(table["path"]) == paths and list(table["index"]) == list(range(len(paths)))  # one row per input
    reason = {Path(p).name: r.split(":", 1)[0] if isinstance(r, str) else None
              for p, r in zip(table["path"], table["reject_reason"])}
    assert reason["gone.jpg"] == "unreadable" and reason["notes.jpg"] == "not_an_image" and reason["wall.png"] == "no_face"
    assert reason["README.txt"] == "not_an_image"
    ok = table[table["ok"]]
    assert len(ok) == N_FACES and ok["label"].isin(CLASSES).all()
    probs = ok[[f"prob_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert table.loc[~table["ok"], "prob_happy"].isna().all() and table.loc[~table["ok"], "label"].isna().all()
    assert f"read {len(paths)} = predicted {N_FACES} + rejected 4" in printed and "reconciled" in printed
    assert "[batch-predict]" in printed  # progress lines
    # the few-files mode on the same paths: same answers, same probabilities
    few = {p.path: p for p in predict_files(paths, str(v2_weights))}
    for _, row in table.iterrows():
        single = few[row["path"]]
        assert single.ok == row["ok"]
        if single.ok:
            assert single.label == row["label"]
            np.testing.assert_allclose([single.probabilities[c] for c in CLASSES],
                                       [row[f"prob_{c}"] for c in CLASSES], atol=1e-4)
        else:
            assert single.error.split(":", 1)[0] == row["reject_reason"].split(":", 1)[0]


def test_shard_split_gives_one_row_per_shard_row(ray_session, synthetic_shards, v2_weights, tmp_path):
    from pipeline.predict.batch import run_batch
    from pipeline.artifact.load import load_model
    from pipeline.schema import read_manifest
    from shard_subsets import subset_test_rows

    # 3 test rows per class (21), not all 112: the reconciliation is the same, the CPU time a fifth
    shards = subset_test_rows(synthetic_shards, tmp_path / "subset", per_class=3)
    expected = sum(read_manifest(shards)["counts"]["test"].values())
    out = tmp_path / "shard_preds.parquet"
    report = run_batch(load_model(str(v2_weights)), out, shards=shards, split="test",
                       batch_size=8, actors=1, cpus_per_actor=1.0)
    assert report.reconciled and report.read == expected == report.predicted
    table = pq.read_table(out).to_pandas()
    assert len(table) == expected and table["sample_id"].is_unique
    assert table["true_label"].isin(CLASSES).all() and table["ok"].all()


def test_bad_arguments_are_refused():
    from pipeline.predict.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--input-dir", "x"])  # no --out
    with pytest.raises(SystemExit):
        parse_args(["--input-dir", "x", "--shards", "y", "--out", "p.parquet"])
    with pytest.raises(SystemExit):
        parse_args([])
