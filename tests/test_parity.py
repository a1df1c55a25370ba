"""A pipeline fit is the same fit as bench/profile_seeds.py's one process, and a fit repeats.

The one-process fit calls the training worker's own functions (build_parts, CachedEpochs,
run_epoch) on rows decoded in the process; with the same ``run.seed`` / ``data.seed`` a
one-worker ``pipeline.train`` fit must draw the same batches, augmentation and dropout, so its
epoch's mean train loss and its test accuracy equal the one process's: any drift between the
two paths (another row order, an unseeded draw, another step or EMA order) shows here.
bench/parity.py is the full comparison (several seeds, 20 epochs, time)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench_scripts import load_bench
from pipeline.config import load_config
from pipeline.train.data import batch_augmenter
from pipeline.train.epochs import CachedEpochs, epoch_plan

SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")


def _rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n decoded rows (face 224, crop 112, random pixels), ids in no particular order."""
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (n, 224, 224, 3), dtype=np.uint8),
            "crop": rng.integers(0, 256, (n, 112, 112, 3), dtype=np.uint8),
            "label": rng.integers(0, 7, n).astype(np.int64),
            "sample_id": np.array([f"{rng.integers(0, 2**62):032x}" for _ in range(n)])}


def _epochs(batches: CachedEpochs, n: int) -> list[list[dict[str, torch.Tensor]]]:
    try:
        return [list(batches.epoch()) for _ in range(n)]
    finally:
        batches.close()


def test_held_rows_give_the_same_batches_in_whatever_order_ray_data_delivers_them():
    """Ray Data hands the rows over in task-completion order; the batches must not depend on it."""
    rows = _rows(24)
    shuffled = {k: v[np.random.default_rng(1).permutation(24)] for k, v in rows.items()}
    aug = batch_augmenter(load_config(SMOKE).data)  # crop, rotation, flip, erasing: every draw
    a, b = (_epochs(CachedEpochs(None, 8, 2, aug, seed=3, rows=r), 2) for r in (rows, shuffled))
    assert [len(e) for e in a] == [3, 3]
    for ea, eb in zip(a, b):
        for x, y in zip(ea, eb):
            assert all(torch.equal(x[k], y[k]) for k in ("image", "crop", "label"))
    assert not torch.equal(a[0][0]["image"], a[1][0]["image"]), "each epoch draws anew"


def test_ranks_holding_all_rows_take_disjoint_equal_slices_of_one_permutation():
    """Several ranks each hold every row (pipeline.train.held): per epoch one permutation drawn
    from (seed, epoch) is cut into equal slices, so which rank trains on which rows repeats."""
    plans = [epoch_plan(50, 8, seed=3, epoch=2, rank=r, world=3) for r in range(3)]
    rows = [np.concatenate([idx for idx, _ in p]) for p in plans]
    assert [len(p) for p in plans] == [2, 2, 2], "16 of each rank's 16 rows: equal steps"
    assert len(set(np.concatenate(rows).tolist())) == 48, "no row on two ranks"
    assert [[k for _, k in p] for p in plans] == [[k for _, k in epoch_plan(50, 8, 3, 2, r, 3)] for r in range(3)]
    assert not np.array_equal(rows[0], np.concatenate([i for i, _ in epoch_plan(50, 8, 3, 3, 0, 3)]))


def test_one_process_fit_repeats_exactly():
    bench = load_bench("profile_seeds")
    cfg = load_config(SMOKE, ["schedule.epochs=1", "data.batch_size=8", "run.seed=4", "data.seed=4"])
    classes = [str(i) for i in range(7)]
    train, test = _rows(16, 1), _rows(8, 2)
    first, second = (bench.fit(cfg, train, test, classes, curve=False) for _ in range(2))
    assert first == second  # test accuracy and every epoch's mean train loss, bit for bit


@pytest.mark.ray
@pytest.mark.slow  # one Ray Train fit of one epoch: ~40 s on 2 cores
def test_pipeline_fit_equals_the_one_process_fit(ray_session, synthetic_shards, tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline.train import open_run, run_training

    bench = load_bench("profile_seeds")
    cfg = bench.seeded(SMOKE, synthetic_shards, 5, [
        "schedule.epochs=1", "tracking.log_model=false", f"run.storage_path={tmp_path / 'ray'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    managers = _actors("DatasetManager")
    out = run_training(open_run(cfg), cfg)
    # no helper actors a held-rows fit on the local instance does not use (pipeline.train.lean)
    assert _actors("DatasetManager") == managers and _actors("PlacementGroupCleaner") == 0
    (logged,) = MlflowClient(out.tracking_uri).get_metric_history(out.run_id, "train_loss")

    train, test, classes = bench.fit_rows(synthetic_shards, cfg)
    val_curve: list[float] = []
    accs, losses = bench.fit(cfg, train, test, classes, curve=False, val=bench.val_rows(synthetic_shards, cfg),
                             val_curve=val_curve)
    val_logged = {m.step: m.value for m in MlflowClient(out.tracking_uri).get_metric_history(out.run_id, "val_accuracy")}
    assert val_curve == [pytest.approx(val_logged[0])]  # the same val carve, validated the same way
    assert out.metrics["train_steps"] == len(train["label"]) // cfg.data.batch_size  # partial batch dropped
    # the same batches, augmentation draws, dropout and steps: float noise at most
    assert losses[0] == pytest.approx(logged.value, rel=1e-5), (losses[0], logged.value)
    assert accs[-1][0] == pytest.approx(out.metrics["test_accuracy"])


def _actors(class_name: str) -> int:
    """Actors of ``class_name`` this Ray session has had, dead or alive."""
    from ray.util.state import list_actors

    return len(list_actors(filters=[("class_name", "=", class_name)], limit=10_000))


@pytest.mark.ray
def test_lean_trainer_drops_only_the_helpers_a_fit_does_not_use(ray_session, monkeypatch):
    """Real Train V2 callback lists: the dataset actor only goes without datasets, the placement
    group cleaner only where POSTER_TRAIN_PG_CLEANER=0 (the local instance), the rest stays."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipeline.train.lean import PG_CLEANER_ENV, LeanTorchTrainer

    def names(cls: type, env: str, **kw) -> list[str]:
        monkeypatch.setenv(PG_CLEANER_ENV, env)
        trainer = cls(lambda: None, scaling_config=ray.train.ScalingConfig(num_workers=1), **kw)
        return [type(c).__name__ for c in trainer._create_default_callbacks()]

    full = names(TorchTrainer, "1")
    assert {"DatasetsCallback", "PlacementGroupCleanerCallback"} <= set(full)
    assert names(LeanTorchTrainer, "1") == [n for n in full if n != "DatasetsCallback"]
    assert names(LeanTorchTrainer, "0") == [n for n in full if n not in ("DatasetsCallback", "PlacementGroupCleanerCallback")]
    with_data = names(LeanTorchTrainer, "0", datasets={"train": ray.data.range(4)})
    assert with_data == [n for n in full if n != "PlacementGroupCleanerCallback"]
