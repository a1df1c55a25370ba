"""Train-time augmentation on uint8 batches (pipeline.transforms.augment_batch)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import ConfigError, load_config
from pipeline.transforms import _warp, augment_batch


def _square_batch(n: int = 8) -> dict[str, np.ndarray]:
    """A white square off-centre on black, at the same relative place in face and crop."""
    image = np.zeros((n, 224, 224, 3), np.uint8)
    image[:, 60:100, 120:160] = 255
    crop = np.zeros((n, 112, 112, 3), np.uint8)
    crop[:, 30:50, 60:80] = 255
    return {"image": image, "crop": crop, "label": np.arange(n)}


def _centre(img: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(img[..., 0] > 128)
    return np.array([xs.mean() / img.shape[1], ys.mean() / img.shape[0]])


def test_warp_identity_rotation_and_crop_are_exact():
    a = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    assert (_warp(a, (0.0, 0.0, 1.0), 0.0) == a).all()
    assert (_warp(a, (0.0, 0.0, 1.0), 90.0) == np.rot90(a, 1)).all()  # counter-clockwise
    assert (_warp(a, (0.0, 0.0, 0.5), 0.0)[::2, ::2] == a[:112, :112]).all()  # top-left quarter, 2x


def test_crop_and_rotation_move_face_and_landmark_crop_together():
    batch = _square_batch()
    out = augment_batch(batch, hflip=0.5, erasing=0.0, erasing_scale=(0.02, 0.1), noise=0.0,
                        crop_area_min=0.6, rotation=15.0)
    moved = 0
    for i in range(len(out["image"])):
        face, crop = _centre(out["image"][i]), _centre(out["crop"][i])
        assert np.abs(face - crop).max() < 0.02, (i, face, crop)  # one box and angle for both
        moved += np.abs(face - _centre(batch["image"][i])).max() > 0.01
    assert moved >= 6  # the geometry really varies row to row
    assert out["label"].tolist() == batch["label"].tolist()
    assert batch["image"][:, 60:100, 120:160].min() == 255  # the input batch is not modified


def test_off_by_default_keeps_pixels():
    batch = _square_batch()
    out = augment_batch(batch, hflip=0.0, erasing=0.0, erasing_scale=(0.02, 0.1), noise=0.0)
    assert (out["image"] == batch["image"]).all() and (out["crop"] == batch["crop"]).all()


@pytest.mark.parametrize("override, message", [
    ("data.crop_area_min=0.05", "data.crop_area_min"), ("data.rotation=90", "data.rotation")])
def test_bad_geometry_settings_are_rejected(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
