"""pipeline.predict on generated photos: detection + alignment (the ingest FaceProcessor), one
answer per readable face, a clear error for a corrupt file, a faceless image and a missing file.

No MLflow or Ray: the model is a ``weights.pt`` of an untrained POSTER-tiny (the registry tests
run the same CLI against ``models:/`` URIs).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("mediapipe")

CLASSES = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    import poster_model
    import torch

    from pipeline.artifact.files import save_weights

    torch.manual_seed(0)
    cfg = poster_model.variant_config("tiny", len(CLASSES))
    model = poster_model.build_poster(cfg)
    path = tmp_path_factory.mktemp("predict-model") / "weights.pt"
    return save_weights(path, model.state_dict(), cfg, CLASSES, {"bgr": False, "use_crop": True})


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    from pipeline import synth

    d = tmp_path_factory.mktemp("photos")
    out = {}
    for label in ("happy", "surprise"):
        face = synth.generate(label, 900, seed=5)  # indices far from any shard's
        out[label] = d / f"{label}.jpg"
        cv2.imwrite(str(out[label]), cv2.cvtColor(face.image, cv2.COLOR_RGB2BGR))
    big = synth.generate("sad", 901, seed=5).image  # a larger photo with the face off-centre
    canvas = np.full((480, 640, 3), 40, np.uint8)
    canvas[200:424, 350:574] = big
    out["sad_png"] = d / "sad_in_scene.png"
    cv2.imwrite(str(out["sad_png"]), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    out["faceless"] = d / "wall.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(out["faceless"]), cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), (0, 0), 3))
    out["corrupt"] = d / "corrupt.jpg"
    out["corrupt"].write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 50)
    out["missing"] = d / "does_not_exist.jpg"
    return out


def test_predict_cli_answers_faces_and_explains_failures(weights, photos, capsys):
    from pipeline.predict.cli import main

    order = ["happy", "corrupt", "surprise", "faceless", "sad_png", "missing"]
    rc = main([str(photos[k]) for k in order] + ["--model", str(weights), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    res = json.loads(captured.out)
    assert [r["path"] for r in res] == [str(photos[k]) for k in order]  # input order kept
    by = dict(zip(order, res))
    for k in ("happy", "surprise", "sad_png"):
        r = by[k]
        assert r["ok"] and r["error"] is None, r
        assert r["label"] in CLASSES
        assert set(r["probabilities"]) == set(CLASSES)
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
        assert r["landmarks_from"] == "detector"
    assert not by["corrupt"]["ok"] and by["corrupt"]["error"].startswith("not_an_image")
    assert not by["faceless"]["ok"] and by["faceless"]["error"].startswith("no_face")
    assert not by["missing"]["ok"] and by["missing"]["error"].startswith("unreadable")
    assert "3 of 6 image(s) could not be answered" in captured.err


def test_predict_text_output_and_exit_codes(weights, photos, capsys, tmp_path):
    from pipeline.predict.cli import main

    rc = main([str(photos["happy"]), str(photos["faceless"]), "--model", str(weights),
               "--save-aligned", str(tmp_path / "aligned")])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert out[0].startswith(f"{photos['happy']}: ") and "neutral" in out[0]
    assert out[1] == f"{photos['faceless']}: ERROR no_face: no face found by the detector"
    assert (tmp_path / "aligned" / "happy_aligned.png").is_file()

    assert main([str(photos["corrupt"]), str(photos["faceless"]), "--model", str(weights)]) == 1
    capsys.readouterr()
    assert main([str(photos["happy"]), "--model", str(tmp_path / "nope.pt")]) == 2
    assert "cannot load model" in capsys.readouterr().err


def test_predict_uses_ingest_alignment_and_eval_preprocessing(weights, photos):
    """The CLI's numbers equal FaceProcessor + predict_logits done by hand (no private copy)."""
    import torch

    from pipeline.artifact.load import load_model
    from pipeline.artifact.infer import predict_logits
    from pipeline.faces.align import FaceProcessor
    from pipeline.predict import predict_files, read_rgb

    loaded = load_model(str(weights))
    fp = FaceProcessor()
    try:
        face = fp.process(read_rgb(photos["surprise"]))
        preds = predict_files([str(photos["surprise"])], loaded=loaded, processor=fp)
    finally:
        fp.close()
    probs = torch.softmax(predict_logits(loaded.model, face.image[None], face.crop[None]), 1)[0]
    assert preds[0].probabilities == pytest.approx(dict(zip(CLASSES, probs.tolist())), abs=1e-6)
