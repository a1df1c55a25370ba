"""A single-model registry from before the candidates/served split keeps working (issue 31,
item 1): a review refuses it with the command that migrates it, ``registry migrate`` moves its
@challenger into ``<name>-candidates`` and leaves @champion served. sqlite store, no Ray."""
from __future__ import annotations

NAME = "poster-fer-legacy"
CLASSES = ["surprise", "fear", "disgust", "happy", "sad", "angry", "neutral"]


def test_single_model_registry_is_refused_then_migrated(tmp_path, capsys):
    import pytest
    from mlflow.tracking import MlflowClient

    from model_runs import constant_model_run
    from pipeline.registry import RegistryError, review
    from pipeline.registry.cli import main
    from pipeline.registry.versions import find_logged_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    manifest = {"classes": CLASSES, "content_hash": "f" * 64}
    c = MlflowClient(uri, registry_uri=uri)
    c.create_registered_model(NAME)  # the old layout: versions and both aliases on one model
    run = c.get_run(constant_model_run(uri, manifest, 0, "legacy"))
    model = find_logged_model(c, run)
    for i in (0, 1):  # two versions of one logged model: what matters here is which alias is where
        mv = c.create_model_version(NAME, model.model_uri, run.info.run_id, tags={"test_accuracy": str(i)})
    c.set_registered_model_alias(NAME, "champion", "1")
    c.set_registered_model_alias(NAME, "challenger", "2")

    with pytest.raises(RegistryError, match=f"python -m pipeline.registry migrate --model {NAME}"):
        review(NAME, str(tmp_path / "no-shards"), tracking_uri=uri)
    assert main(["review", "--model", NAME, "--shards", str(tmp_path), "--tracking-uri", uri]) == 2
    assert "migrate it first" in capsys.readouterr().err

    assert main(["migrate", "--model", NAME, "--tracking-uri", uri]) == 0
    assert f"{NAME}-candidates v1 @challenger" in capsys.readouterr().out
    cand = c.get_model_version_by_alias(NAME + "-candidates", "challenger")
    assert cand.source == f"models:/{NAME}/{mv.version}" and cand.tags["migrated_from"] == f"{NAME}/2"
    assert cand.tags["test_accuracy"] == "1"  # the version's record came along
    assert {k: str(v) for k, v in c.get_registered_model(NAME).aliases.items()} == {"champion": "1"}
    assert main(["migrate", "--model", NAME, "--tracking-uri", uri]) == 0  # again: nothing to do
    assert "nothing to migrate" in capsys.readouterr().out

    assert main(["list", "--model", NAME, "--tracking-uri", uri]) == 0
    rows = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()[1:]}
    assert "challenger" in rows["1"] and "champion" in rows[f"{NAME}:1"]  # candidate 1, legacy served v1
