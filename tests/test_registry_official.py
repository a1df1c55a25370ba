"""Importing an official POSTER checkpoint (``rafdb_best.pth`` format) into the registry.

The checkpoint is synthetic: a fresh POSTER-small state dict with the ``module.`` prefix and the
dead entries the official file carries (``poster_model.weights.V1_UNUSED_KEYS``), saved as
``{'iter', 'model_state_dict', 'optimizer_state_dict'}``. The import must re-order the head from
RAF-DB's official label order, remember that the model expects BGR pixels and derives its
landmark input from the image, and register the result like any other version.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from shard_subsets import subset_test_rows

pytestmark = [pytest.mark.slow]

NAME = "poster-fer-official-test"
EXPERIMENT = "poster-fer/official-test"
RAFDB_ORDER = ["surprise", "fear", "disgust", "happy", "sad", "anger", "neutral"]
CANONICAL7 = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]


@pytest.fixture(scope="module")
def mini_shards(synthetic_shards, tmp_path_factory) -> str:
    """One test row per class of the session shards (POSTER-small is slow on 2 CPU cores)."""
    return subset_test_rows(synthetic_shards, tmp_path_factory.mktemp("mini") / "shards")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    from official_files import make_synthetic_official
    from pipeline.registry.cli import main

    d = tmp_path_factory.mktemp("official")
    ckpt = make_synthetic_official(d / "rafdb_best.pth", variant="small", seed=1)
    uri = f"sqlite:///{d / 'mlflow.db'}"
    MlflowClient(uri).create_experiment(EXPERIMENT, artifact_location=(d / "artifacts").as_uri())
    rc = main(["import-official", "--checkpoint", str(ckpt), "--variant", "small", "--dataset", "rafdb",
               "--experiment", EXPERIMENT, "--model", NAME, "--tracking-uri", uri])
    return {"rc": rc, "ckpt": ckpt, "uri": uri, "dir": d}


def test_synthetic_checkpoint_has_the_official_layout(imported):
    from poster_model.weights import V1_UNUSED_KEYS

    blob = torch.load(imported["ckpt"], map_location="cpu", weights_only=True)
    assert set(blob) == {"iter", "model_state_dict", "optimizer_state_dict"}
    keys = blob["model_state_dict"].keys()
    assert all(k.startswith("module.") for k in keys)
    assert {f"module.{k}" for k in V1_UNUSED_KEYS} <= set(keys)
    assert len(keys) == 981  # entries of an official POSTER-small checkpoint (reference manifest)


def test_import_registers_a_challenger_with_tags_and_card(imported):
    from pipeline.artifact.official import file_sha256
    from pipeline.registry import client_for

    assert imported["rc"] == 0
    c = client_for(imported["uri"])
    mv = c.get_model_version_by_alias(NAME + "-candidates", "challenger")  # a candidate, not served
    t = dict(mv.tags)
    assert t["poster.source"] == "official" and t["poster.dataset"] == "rafdb"
    assert t["poster.variant"] == "small" and t["poster.bgr"] == "true"
    assert t["poster.classes"].split(",") == CANONICAL7
    assert t["poster.dataset_hash"] == "official:rafdb"
    assert t["poster.framing"] == "rafdb-aligned"  # the official model's training framing
    assert t["poster.official_sha256"] == file_sha256(imported["ckpt"])
    run = c.get_run(mv.run_id)
    assert run.info.status == "FINISHED"
    assert c.get_experiment(run.info.experiment_id).name == EXPERIMENT
    assert "Imported official checkpoint" in mv.description and "BGR" in mv.description


def test_imported_model_equals_the_official_model_on_bgr_input(imported):
    """Same logits as the checkpoint loaded directly, fed BGR, with columns in canonical order."""
    import mlflow
    import pandas as pd
    import poster_model

    from pipeline.artifact.load import load_torch_model
    from pipeline.transforms import to_model_inputs

    model, classes, extra = load_torch_model(f"models:/{NAME}-candidates@challenger", imported["uri"])
    assert classes == CANONICAL7
    assert extra["bgr"] is True and extra["use_crop"] is False
    assert extra["official_class_order"] == RAFDB_ORDER
    assert extra["framing"]["name"] == "rafdb-aligned" and extra["framing"]["size"] == 100

    official = poster_model.load_official_checkpoint(str(imported["ckpt"]), variant="small", num_classes=7)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    bgr_image, _ = to_model_inputs(faces[..., ::-1].copy(), faces[:, :112, :112])
    with torch.no_grad():
        ref = official(bgr_image, None)[0]  # the official test.py: BGR pixels, crop from the image
    perm = [RAFDB_ORDER.index(c) for c in CANONICAL7]

    mlflow.set_tracking_uri(imported["uri"])
    mlflow.set_registry_uri(imported["uri"])
    pyf = mlflow.pyfunc.load_model(f"models:/{NAME}-candidates@challenger")
    out = pyf.predict(pd.DataFrame({"image": list(faces)}))
    probs = out[[f"prob_{c}" for c in CANONICAL7]].to_numpy()
    assert np.allclose(probs, torch.softmax(ref[:, perm], 1).numpy(), atol=1e-5)
    assert out["label"].tolist() == [CANONICAL7[i] for i in ref[:, perm].argmax(1).tolist()]


def test_review_of_an_imported_model_needs_allow_other_shards(imported, mini_shards):
    from pipeline.registry import ReviewRefused, review

    with pytest.raises(ReviewRefused, match="official:rafdb"):
        review(NAME, mini_shards, tracking_uri=imported["uri"])
    res = review(NAME, mini_shards, allow_other_shards=True, tracking_uri=imported["uri"])
    assert res.champion is None and res.decision == "none"
    assert res.challenger.metrics["num_samples"] == 7 and res.challenger.parameters > 30_000_000


def test_evaluate_cli_reads_official_checkpoints(imported, mini_shards, tmp_path):
    import json

    from pipeline.evaluate.cli import main

    rc = main(["--model", str(imported["ckpt"]), "--variant", "small", "--dataset", "rafdb",
               "--shards", mini_shards, "--out", str(tmp_path)])
    assert rc == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["kind"] == "official" and m["extra"]["bgr"] is True
    assert Path(tmp_path / "confusion.png").is_file()
