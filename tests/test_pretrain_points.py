"""The 68-point geometry of `pipeline.pretrain landmarks` (no Ray): the mirror permutation,
augmentation that moves points with pixels, NME, and what a training run records about its
landmark net (tags, the one warning, the model card line)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.pretrain import points as P


def test_flip_permutation_maps_each_point_to_its_mirror():
    perm = P.FLIP_PERM
    assert sorted(perm) == list(range(68))
    assert (perm[perm] == np.arange(68)).all()  # an involution
    assert perm[0] == 16 and perm[16] == 0 and perm[8] == 8  # jaw ends swap, chin stays
    assert perm[36] == 45 and perm[39] == 42  # outer and inner eye corners
    assert set(perm[36:42]) == set(range(42, 48)) and set(perm[42:48]) == set(range(36, 42))  # eye <-> eye
    assert set(perm[17:22]) == set(range(22, 27))  # brow <-> brow
    assert perm[48] == 54 and perm[51] == 51 and perm[57] == 57 and perm[62] == 62  # mouth corners, midline
    assert all(perm[i] == i for i in (27, 28, 29, 30, 33))  # nose bridge and tip stay


def test_flip_of_a_symmetric_face_is_itself():
    from pipeline.synth.generator import BASE_SHAPE, SIZE

    face = (BASE_SHAPE / SIZE).astype(np.float32)  # the generator's symmetric neutral face
    np.testing.assert_allclose(P.flip_points(face), face, atol=1e-5)
    moved = face.copy()
    moved[36:42, 0] -= 0.05  # the subject's right eye moves outwards: in the mirror, the left eye does
    flipped = P.flip_points(moved)
    assert np.allclose(flipped[42:48, 0], face[42:48, 0] + 0.05, atol=1e-5)
    assert np.allclose(flipped[36:42], face[36:42], atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_augmentation_moves_points_with_the_pixels(seed):
    """A single bright pixel at a point's position lands where the augmented point says."""
    img = np.zeros((1, 112, 112, 3), np.uint8)
    pts = np.tile(np.array([0.3, 0.4], np.float32), (1, 68, 1))
    img[0, int(0.4 * 112), int(0.3 * 112)] = 255
    crops, moved = P.augment(img, pts, np.random.default_rng(seed), hflip=0.5, area_min=0.7, shift=0.05,
                             rotation=20)
    ys, xs = np.nonzero(crops[0, :, :, 0])
    assert len(xs) >= 1
    found = np.array([(xs.mean() + 0.5) / 112, (ys.mean() + 0.5) / 112])
    assert np.abs(found - moved[0, 0]).max() < 2.5 / 112  # within the nearest sampling's pixels


def test_nme_per_region_and_normaliser():
    true = np.zeros((1, 68, 2), np.float32)
    true[0, 36] = [0.2, 0.5]
    true[0, 45] = [0.6, 0.5]  # inter-ocular distance 0.4
    pred = true.copy()
    pred[0, 48:68, 0] += 0.04  # only the mouth is off, by 0.1 IOD
    m = P.nme_of_sums(P.error_sums(pred, true))
    assert m["nme_mouth"] == pytest.approx(0.1)
    assert m["nme_jaw"] == m["nme_eyes"] == 0.0
    assert m["nme"] == pytest.approx(0.1 * 20 / 68)
    assert not P.usable(np.zeros((1, 68, 2), np.float32))[0] and P.usable(true)[0]


def test_random_frozen_landmark_net_warns_once_and_is_tagged(tmp_path, capsys):
    import torch

    from pipeline import landmark_weights as LW
    from pipeline.config import ModelCfg
    from pipeline.registry.card import _limits
    from poster_model.mobilefacenet import MobileFaceNet

    LW._warned = False
    tags = LW.landmark_net_tags(ModelCfg())
    LW.landmark_net_tags(ModelCfg())
    assert tags == {"poster.landmark_net": "random-frozen"}
    assert capsys.readouterr().err.count("random and frozen") == 1  # once per process
    assert any("random and frozen" in x for x in _limits(tags, {}, None, [], {}))

    path = tmp_path / "lm.pth"
    torch.save({"state_dict": MobileFaceNet().state_dict()}, path)
    LW._warned = False
    tags = LW.landmark_net_tags(ModelCfg(mobilefacenet_weights=str(path)))
    assert tags["poster.landmark_net"] == "pretrained"
    assert tags["poster.landmark_weights_sha256"] == LW.sha256(path)
    assert tags["poster.landmark_weights_source"] == str(path)
    assert "random and frozen" not in capsys.readouterr().err
    assert not any("random and frozen" in x for x in _limits(tags, {}, None, [], {}))
    trainable = ModelCfg(overrides={"landmark_trainable": True})
    assert LW.landmark_net_tags(trainable) == {"poster.landmark_net": "random-trainable"}


def test_pretrain_cli_refuses_bad_input_before_ray(tmp_path, capsys):
    from pipeline.pretrain.cli import main

    assert main(["landmarks", "--shards", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "nope") in err
    assert main(["landmarks", "--shards", str(tmp_path), "schedule.epochz=3"]) == 2
    assert "schedule.epochz" in capsys.readouterr().err
    assert main(["landmarks", "--shards", "a", "b", "data.input_size=100"]) == 2
    assert main(["landmarks", "--shards", "a", "b", "optim.lr=0.01", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "task: landmarks" in printed and "- a\n" in printed and "lr: 0.01" in printed
    assert "metric: val_nme" in printed  # the task's defaults survive an override of their section
