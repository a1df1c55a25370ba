"""Registry end to end on a real sqlite MLflow store with a real training run.

The better model is the session's ``smoke_run`` (POSTER-tiny, 8 epochs; shared with
test_train.py); the weaker one is a logged POSTER-tiny in the same store whose head always
answers class 0 (tests/model_runs.py). The module fixture ``flow`` plays the registry story once
(on a per-class subset of the test split, same manifest):

    v1 = weak   → review --promote → first model ever: becomes @champion
    v2 = good   → review --promote (CLI) → beats v1: @champion, @challenger dropped
    v3 = weak   → review --promote → loses: rejected, tagged, keeps @challenger

and snapshots tags/aliases after each step; the tests check the snapshots and then probe the
store (refusals, dry run, force, list/show, pyfunc vs evaluator, evaluate and predict CLIs).
A separate registered-model name keeps it apart from anything else using the smoke store.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from shard_subsets import subset_test_rows

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
NAME = "poster-fer-regtest"


@pytest.fixture(scope="module")
def runs(smoke_run, ray_session, tmp_path_factory):
    from types import SimpleNamespace

    from model_runs import constant_model_run

    good, cfg, info = smoke_run
    tmp = tmp_path_factory.mktemp("regtest")
    # The loser needs no training (a Ray Train fit is ~40 s here): a logged POSTER-tiny that
    # always answers class 0, in the good run's experiment, scores 1/7 on the review rows.
    weak = SimpleNamespace(run_id=constant_model_run(good.tracking_uri, info["manifest"], 0, good.experiment))
    _client(good.tracking_uri).log_metric(weak.run_id, "val_accuracy", 1 / 7)  # as a training run logs it
    out = {"good": good, "weak": weak, "uri": good.tracking_uri, "full_shards": str(cfg.data.shards),
           "info": info, "tmp": tmp}
    # Reviews run on 3 test rows per class of the same shards (same manifest hash): POSTER-tiny
    # costs 0.1-0.3 s per image on 2 busy cores. The full split is evaluated once (evaluate test).
    (tmp / "review").mkdir()
    out["shards"] = _shards_variant(out, tmp / "review", per_class=3)
    return out


def _shards_variant(runs, tmp: Path, per_class: int = 1, **manifest_changes) -> str:
    """Test rows of the shards (``per_class`` of each class) under a manifest with some fields
    changed: small, so the reviews that only probe refusals and alias handling stay fast."""
    return subset_test_rows(runs["full_shards"], tmp / "variant", per_class, **manifest_changes)


def _client(uri):
    from pipeline.registry import client_for

    return client_for(uri)


def _aliases(uri) -> dict[str, str]:
    """@challenger of the candidates model, and @champion as the candidate version it is a copy of."""
    from registry_layout import aliases

    return aliases(_client(uri), NAME)


def _tags(uri, version) -> dict[str, str]:
    return dict(_client(uri).get_model_version(NAME + "-candidates", version).tags)


@pytest.fixture(scope="module")
def flow(runs):
    from pipeline.registry import register_run, review
    from pipeline.registry.cli import main

    uri, shards = runs["uri"], runs["shards"]
    out: dict = {}
    v1 = register_run(runs["weak"].run_id, uri, NAME)
    out["v1_aliases_registered"] = _aliases(uri)
    r1 = review(NAME, shards, promote=True, tracking_uri=uri, user="tester")
    out["first"] = {"version": v1, "result": r1, "tags": _tags(uri, v1), "aliases": _aliases(uri)}

    v2 = register_run(runs["good"].run_id, uri, NAME)
    buf = io.StringIO()
    with mock.patch.dict(os.environ, {"POSTER_REVIEWER": "cli-tester"}), contextlib.redirect_stdout(buf):
        rc = main(["review", "--model", NAME, "--shards", shards, "--promote", "--tracking-uri", uri])
    out["better"] = {"version": v2, "rc": rc, "stdout": buf.getvalue(), "tags": _tags(uri, v2),
                     "old_champion_tags": _tags(uri, v1), "aliases": _aliases(uri)}

    v3 = register_run(runs["weak"].run_id, uri, NAME)
    r3 = review(NAME, shards, promote=True, margin=0.0, tracking_uri=uri, user="tester")
    out["worse"] = {"version": v3, "result": r3, "tags": _tags(uri, v3),
                    "champion_tags": _tags(uri, v2), "aliases": _aliases(uri)}
    return out


def test_first_version_becomes_champion_when_promoted(flow):
    assert flow["v1_aliases_registered"] == {"challenger": flow["first"]["version"]}
    step = flow["first"]
    r = step["result"]
    assert r.champion is None and r.wins and r.decision == "promoted"
    assert step["aliases"] == {"champion": step["version"]}
    t = step["tags"]
    assert t["decision"] == "promoted" and t["decided_by"] == "tester" and "first" in t["reason"]
    assert t["compared_to_version"] == "none"


def test_review_prints_both_and_promotes_the_better_one(flow):
    step = flow["better"]
    v1, v2 = flow["first"]["version"], step["version"]
    assert step["rc"] == 0
    text = step["stdout"]
    for needle in (f"champion v{v1}", f"challenger v{v2}", "accuracy", "mean_class_accuracy",
                   "macro_f1", "recall_happy", "latency_ms_per_image", "parameters",
                   f"confusion champion v{v1}:", f"confusion challenger v{v2}:", "decision: promoted",
                   f"@champion -> v{v2}"):
        assert needle in text, needle
    assert step["aliases"] == {"champion": v2}  # challenger alias moved to champion
    t = step["tags"]
    assert t["decision"] == "promoted" and t["decided_by"] == "cli-tester"
    assert t["review_metric"] == "accuracy" and float(t["margin"]) == 0.0
    assert t["compared_to_version"] == v1 and t["forced"] == "false"
    assert float(t["review_accuracy"]) > float(t["champion_accuracy"])
    assert t["decided_at"].endswith("+00:00")
    old = step["old_champion_tags"]
    assert old["last_review_outcome"] == "replaced" and old["last_review_challenger"] == v2


def test_worse_challenger_is_not_promoted_and_the_decision_is_tagged(flow):
    step = flow["worse"]
    r = step["result"]
    v2, v3 = flow["better"]["version"], step["version"]
    assert r.decision == "rejected" and not r.wins and r.delta < 0
    assert step["aliases"] == {"champion": v2, "challenger": v3}
    t = step["tags"]
    assert t["decision"] == "rejected" and t["decided_by"] == "tester"
    assert "<= margin" in t["reason"] and t["compared_to_version"] == v2
    assert float(t["review_accuracy"]) == pytest.approx(r.challenger.metrics["accuracy"], abs=1e-5)
    assert step["champion_tags"]["last_review_outcome"] == "kept"


def test_review_numbers_come_from_the_evaluator(flow, runs):
    r = flow["worse"]["result"]
    champ = r.champion
    subset = json.loads((Path(runs["shards"]) / "_manifest.json").read_text())
    assert champ.metrics["num_samples"] == sum(subset["counts"]["test"].values())
    assert champ.confusion.sum() == champ.metrics["num_samples"]
    assert champ.parameters > 0 and champ.metrics["latency_ms_per_image"] > 0
    assert champ.metrics["accuracy"] > r.challenger.metrics["accuracy"]


def test_version_tags_and_model_card(flow, runs):
    import mlflow

    from pipeline.artifact.load import resolve_model_uri

    uri, v2 = runs["uri"], flow["better"]["version"]
    t = flow["better"]["tags"]
    assert t["poster.dataset_hash"] == runs["info"]["content_hash"]
    assert t["poster.variant"] == "tiny" and len(t["poster.config_hash"]) == 16
    assert t["poster.classes"].split(",") == runs["info"]["manifest"]["classes"]
    assert t["source_run_id"] == runs["good"].run_id
    for k in ("val_accuracy", "test_accuracy", "test_macro_f1", "test_recall_happy"):
        assert k in t, k
    run_commit = _client(uri).get_run(runs["good"].run_id).data.tags.get("mlflow.source.git.commit")
    if run_commit:  # the commit the run was trained at (HEAD may have moved since)
        assert t["git_commit"] == run_commit
    mv = _client(uri).get_model_version(NAME + "-candidates", v2)
    assert mv.description.startswith(f"# Model card: {NAME}-candidates v{v2}")
    assert f"served as `{NAME}@champion` only after a review" in mv.description
    served = _client(uri).get_model_version_by_alias(NAME, "champion")  # its copy carries the card too
    assert served.description == mv.description and served.tags["candidate_version"] == v2
    d = runs["tmp"] / "card"
    card_uri = resolve_model_uri(f"models:/{NAME}-candidates/{v2}/model_card/model_card.md", uri)
    card = Path(mlflow.artifacts.download_artifacts(card_uri, dst_path=str(d), tracking_uri=uri)).read_text()
    for section in ("## Data", "## Recipe", "## Metrics", "## Per-class recall",
                    "## Confusion matrix (test)", "## Known limits", "synthetic"):
        assert section in card, section
    assert "![test confusion matrix](test_confusion.png)" in card
    arts = {a.path for a in _client(uri).list_artifacts(runs["good"].run_id, "model_card")}
    assert {"model_card/model_card.md", "model_card/test_confusion.png"} <= arts


def test_pyfunc_on_raw_image_bytes_matches_the_evaluator(flow, runs):
    import mlflow
    import pandas as pd
    from mlflow.models import convert_input_example_to_serving_input
    from mlflow.pyfunc import scoring_server

    from pipeline.evaluate import iter_split_batches
    from pipeline.artifact.infer import predict_logits
    from pipeline.metrics import confusion_matrix
    from pipeline.artifact.load import load_torch_model
    from pipeline.transforms import CROP_SIZE, IMAGE_SIZE, decode_image

    uri, v2, shards = runs["uri"], flow["better"]["version"], runs["shards"]
    model_uri = f"models:/{NAME}-candidates/{v2}"
    rows = {k: np.concatenate([b[k] for b in iter_split_batches(shards, "test", 64)])
            for k in ("image", "landmark_crop", "label")}
    torch_model, classes, extra = load_torch_model(model_uri, uri)
    images = np.stack([decode_image(b, IMAGE_SIZE) for b in rows["image"]])
    crops = np.stack([decode_image(b, CROP_SIZE) for b in rows["landmark_crop"]])
    want = predict_logits(torch_model, images, crops, bgr=extra["bgr"]).argmax(1).numpy()

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    pyf = mlflow.pyfunc.load_model(model_uri)
    got = pyf.predict(pd.DataFrame({"image": list(rows["image"]), "landmark_crop": list(rows["landmark_crop"])}))
    assert got["label_index"].tolist() == want.tolist()
    assert got["label"].tolist() == [classes[i] for i in want]
    probs = got[[f"prob_{c}" for c in classes]].to_numpy()
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)

    review_cm = flow["worse"]["result"].champion.confusion  # evaluate_batches over these rows
    assert (confusion_matrix(rows["label"], got["label_index"].to_numpy(), len(classes)) == review_cm).all()

    # HWC uint8 arrays give the same answers as the encoded bytes they were decoded from
    arrays = pyf.predict(pd.DataFrame({"image": list(images[:8]), "landmark_crop": list(crops[:8])}))
    assert arrays["label_index"].tolist() == want[:8].tolist()
    # image only: the crop is derived as ingest does (face resized to 112)
    assert len(pyf.predict(pd.DataFrame({"image": list(rows["image"][:2])}))) == 2
    # what `mlflow models serve` does with a JSON request (base64 bytes): the scoring server's
    # own request handler, called in-process
    example = pd.DataFrame({"image": list(rows["image"][:2])})
    resp = scoring_server.invocations(convert_input_example_to_serving_input(example), "application/json",
                                      pyf, pyf.metadata.get_input_schema())
    assert resp.status == 200, resp.response
    served = json.loads(resp.response)["predictions"]
    assert [p["label"] for p in served] == got["label"].tolist()[:2]


def test_raw_torch_model_is_loadable(flow, runs):
    import torch

    from pipeline.artifact.load import load_torch_model

    model, classes, extra = load_torch_model(f"models:/{NAME}@champion", runs["uri"])
    assert isinstance(model, torch.nn.Module) and not model.training
    assert classes == runs["info"]["manifest"]["classes"] and extra["variant"] == "tiny"
    logits, _ = model(torch.zeros(2, 3, 224, 224))
    assert logits.shape == (2, len(classes))


def test_list_and_show(flow, runs, capsys):
    from pipeline.registry.cli import main

    uri = runs["uri"]
    assert main(["list", "--model", NAME, "--tracking-uri", uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["version", "aliases"] and len(lines) == 4
    by_version = {ln.split()[0]: ln for ln in lines[1:]}
    assert "champion" in by_version[flow["better"]["version"]]
    assert "challenger" in by_version[flow["worse"]["version"]] and "rejected" in by_version[flow["worse"]["version"]]

    assert main(["show", "@champion", "--model", NAME, "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{NAME} v") and "aliases: champion" in out.splitlines()[0]
    assert f"candidate_version = {flow['better']['version']}" in out
    assert "poster.dataset_hash = " in out and "# Model card" in out
    assert main(["show", "99", "--model", NAME, "--tracking-uri", uri]) == 2


def test_review_refuses_another_class_order(flow, runs, tmp_path, capsys):
    from pipeline.registry import ReviewRefused, review
    from pipeline.registry.cli import main

    classes = runs["info"]["manifest"]["classes"]
    shards = _shards_variant(runs, tmp_path, classes=list(reversed(classes)))
    with pytest.raises(ReviewRefused, match="class order"):
        review(NAME, shards, tracking_uri=runs["uri"])
    rc = main(["review", "--model", NAME, "--shards", shards, "--promote", "--tracking-uri", runs["uri"]])
    assert rc == 3
    assert "refused:" in capsys.readouterr().err
    t = _tags(runs["uri"], flow["worse"]["version"])
    assert t["decision"] == "refused" and "class order" in t["reason"]
    assert _aliases(runs["uri"])["champion"] == flow["better"]["version"]


def test_review_refuses_other_shards_unless_allowed(flow, runs, tmp_path):
    from pipeline.registry import ReviewRefused, review

    shards = _shards_variant(runs, tmp_path, content_hash="0" * 64)
    with pytest.raises(ReviewRefused, match="--allow-other-shards") as e:
        review(NAME, shards, tracking_uri=runs["uri"])
    assert "manifest" in str(e.value)
    res = review(NAME, shards, allow_other_shards=True, tracking_uri=runs["uri"])
    assert res.decision == "none" and res.champion is not None and "dry run" in res.reason
    assert _aliases(runs["uri"]) == {"champion": flow["better"]["version"], "challenger": flow["worse"]["version"]}


def test_dry_run_changes_nothing_and_force_needs_a_reason(flow, runs, capsys, tmp_path):
    from pipeline.registry.cli import main

    uri, shards = runs["uri"], _shards_variant(runs, tmp_path)  # same manifest hash, fewer rows
    before = _aliases(uri)
    assert main(["review", "--model", NAME, "--shards", shards, "--tracking-uri", uri,
                 "--out", str(tmp_path / "rev")]) == 0
    assert "would not promote" in capsys.readouterr().out
    assert _aliases(uri) == before
    assert {p.name for p in (tmp_path / "rev").iterdir()} >= {"report.txt", "review.json"}
    assert main(["review", "--model", NAME, "--shards", shards, "--tracking-uri", uri, "--force"]) == 2
    assert "--reason" in capsys.readouterr().err
    assert _aliases(uri) == before


def test_forced_promotion_is_recorded(flow, runs, tmp_path):
    from pipeline.registry import CHALLENGER, CHAMPION, review

    uri = runs["uri"]
    v2, v3 = flow["better"]["version"], flow["worse"]["version"]
    try:
        # margin 1.0: no challenger can win on accuracy, so only --force can promote it
        res = review(NAME, _shards_variant(runs, tmp_path), margin=1.0, force=True,
                     reason="smaller test of the force path", tracking_uri=uri, user="tester")
        assert res.promoted and res.forced and not res.wins
        t = _tags(uri, v3)
        assert t["decision"] == "promoted" and t["forced"] == "true"
        assert t["reason"].startswith("forced by tester: smaller test of the force path")
        assert _aliases(uri) == {"champion": v3}
    finally:  # restore the story's end state for anything running later
        c = _client(uri)
        copy_of_v2 = [mv for mv in c.search_model_versions(f"name = '{NAME}'") if mv.tags.get("candidate_version") == v2]
        c.set_registered_model_alias(NAME, CHAMPION, copy_of_v2[0].version)
        c.set_registered_model_alias(NAME + "-candidates", CHALLENGER, v3)


def test_evaluate_cli_on_registry_model_and_checkpoint(flow, runs, tmp_path, capsys):
    """The full test split once: the registered model scores what training logged.

    Training evaluated in 1-thread DDP workers, the CLI in one multi-threaded process: float sums
    differ in the last bits (~1e-6 here, against top-2 logit gaps of >= ~0.01), so a near-tie may
    flip one prediction; allow exactly that much. Two flips were the ranks' own BatchNorm
    statistics (fixed: pipeline.train.rank_eval.average_buffers, tests/test_rank_sync.py)."""
    from pipeline.evaluate.cli import main

    uri, good = runs["uri"], runs["good"]
    assert main(["--model", f"models:/{NAME}/{flow['better']['version']}", "--tracking-uri", uri,
                 "--shards", runs["full_shards"], "--out", str(tmp_path / "reg")]) == 0
    reg = json.loads((tmp_path / "reg" / "metrics.json").read_text())
    run = _client(uri).get_run(good.run_id)
    n = runs["info"]["test_rows"]
    assert reg["metrics"]["accuracy"] == pytest.approx(run.data.metrics["test_accuracy"], abs=1.01 / n)
    for k in ("macro_f1", "mean_class_accuracy"):  # one flip moves a class score by <= ~2/support
        assert reg["metrics"][k] == pytest.approx(run.data.metrics[f"test_{k}"], abs=0.05), k
    assert reg["metrics"]["num_samples"] == runs["info"]["test_rows"]
    assert reg["manifest_hash"] == runs["info"]["content_hash"] and reg["kind"] == "registry"

    # the training checkpoint holds the same (best-epoch) weights as the logged model
    assert main(["--model", good.checkpoint_path, "--shards", runs["shards"], "--out", str(tmp_path / "ckpt")]) == 0
    ck = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    assert ck["kind"] == "checkpoint"
    assert np.array_equal(np.asarray(ck["confusion"]), flow["worse"]["result"].champion.confusion)
    small = _shards_variant(runs, tmp_path)
    assert main(["--model", str(Path(good.checkpoint_path).parent), "--shards", small]) == 0  # Ray run dir
    assert "rows: true class, columns: predicted" in capsys.readouterr().out
    for d in ("reg", "ckpt"):
        assert (tmp_path / d / "confusion.png").stat().st_size > 0
        assert (tmp_path / d / "confusion.json").is_file()
    (tmp_path / "r").mkdir()
    reversed_shards = _shards_variant(runs, tmp_path / "r",
                                      classes=list(reversed(runs["info"]["manifest"]["classes"])))
    assert main(["--model", good.checkpoint_path, "--shards", reversed_shards]) == 3


def test_predict_cli_with_the_champion(flow, runs, tmp_path, capsys):
    pytest.importorskip("mediapipe")
    import cv2

    from pipeline import synth
    from pipeline.predict.cli import main

    paths = []
    for label in ("happy", "anger"):
        face = synth.generate(label, 950, seed=9)
        paths.append(tmp_path / f"{label}.jpg")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(face.image, cv2.COLOR_RGB2BGR))
    (tmp_path / "broken.jpg").write_bytes(b"not really a jpeg")
    cv2.imwrite(str(tmp_path / "flat.png"), np.full((160, 160, 3), 90, np.uint8))
    paths += [tmp_path / "broken.jpg", tmp_path / "flat.png"]
    rc = main([str(p) for p in paths] + ["--model", f"models:/{NAME}@champion",
                                         "--tracking-uri", runs["uri"], "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert [r["ok"] for r in res] == [True, True, False, False]
    assert all(r["label"] in runs["info"]["manifest"]["classes"] for r in res[:2])
    assert res[2]["error"].startswith("not_an_image") and res[3]["error"].startswith("no_face")


def test_register_best_trial_of_a_sweep(flow, runs, capsys):
    """--best-of picks the best child run that has a logged model (the shared smoke run is not touched)."""
    from pipeline.registry import best_trial_run
    from pipeline.registry.cli import main

    uri = runs["uri"]
    c = _client(uri)
    exp = c.get_run(runs["weak"].run_id).info.experiment_id
    parent = c.create_run(exp, run_name="regtest-sweep").info.run_id
    c.set_tag(runs["weak"].run_id, "mlflow.parentRunId", parent)
    crashed = c.create_run(exp, run_name="regtest-trial-without-model",
                           tags={"mlflow.parentRunId": parent}).info.run_id
    c.log_metric(crashed, "val_accuracy", 0.99)  # best score, but it never logged a model
    c.set_terminated(crashed, "FAILED")
    assert best_trial_run(parent, uri) == runs["weak"].run_id
    assert main(["register", "--best-of", parent, "--model", NAME, "--alias", "", "--tracking-uri", uri]) == 0
    assert f"registered run {runs['weak'].run_id} as {NAME}-candidates v4" in capsys.readouterr().out
    assert _aliases(uri) == {"champion": flow["better"]["version"], "challenger": flow["worse"]["version"]}
