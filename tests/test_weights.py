"""Strict loading of state dicts built from the official key manifests (values: parity rule)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from poster_model import (PosterConfig, WeightLoadError, build_poster, load_official_checkpoint, load_pretrained,
                          poster_tiny)
from poster_parity import deterministic_tensor, manifest_state_dict, read_manifest
from poster_model.weights import IR50_STAGE4_KEYS, TV_UNUSED_PREFIXES, V1_UNUSED_KEYS, load_image_backbone

MANIFESTS = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "manifests"
needs_manifests = pytest.mark.skipif(not MANIFESTS.is_dir(), reason=f"manifests not found at {MANIFESTS}")


@pytest.fixture(scope="module")
def one_block():
    """Full-width backbones (loadable from the official files) with a 1-block fusion, for speed."""
    return build_poster(PosterConfig(depth=1))


@pytest.fixture(scope="module")
def ir50_state():
    """ir50.json filled by the parity rule (built once: the dead output layer alone is 12.8 M values)."""
    return manifest_state_dict(read_manifest(MANIFESTS / "ir50.json"))


def save(tmp_path, obj, name="w.pth"):
    torch.save(obj, tmp_path / name)
    return tmp_path / name


@needs_manifests
def test_stage4_key_list_matches_manifest():
    names = {e["key"] for e in read_manifest(MANIFESTS / "ir50_stage4_hypothetical.json")}
    assert names == IR50_STAGE4_KEYS and len(names) == 45


@needs_manifests
@pytest.mark.parametrize("extra", ["none", "stage4", "module_prefix"])
def test_ir50_file_loads_strictly(one_block, ir50_state, tmp_path, extra):
    prefix = "module." if extra == "module_prefix" else ""
    state = {prefix + k: v for k, v in ir50_state.items()}
    if extra == "stage4":
        state.update(manifest_state_dict(read_manifest(MANIFESTS / "ir50_stage4_hypothetical.json")))
    report = load_pretrained(one_block, ir50_path=save(tmp_path, state))
    assert len(report["ir50"]) == 12 + (45 if extra == "stage4" else 0)  # output_layer (+ stage 4) ignored
    got = one_block.ir_back.state_dict()
    key = "body.20.res_layer.3.weight"
    torch.testing.assert_close(got[key], state[prefix + key])


@needs_manifests
def test_mobilefacenet_file_loads_strictly(one_block, tmp_path):
    state = manifest_state_dict(read_manifest(MANIFESTS / "mobilefacenet.json"))
    report = load_pretrained(one_block, mobilefacenet_path=save(tmp_path, {"state_dict": state}))
    assert report["mobilefacenet"] == []  # all 333 entries are used (the GDC head is kept, frozen)
    torch.testing.assert_close(one_block.face_landback.conv_6_sep.bn.running_var, state["conv_6_sep.bn.running_var"])


@needs_manifests
@pytest.mark.parametrize("corruption", ["missing", "unexpected", "shape"])
def test_corrupted_files_fail_naming_the_keys(one_block, ir50_state, tmp_path, corruption):
    state = dict(ir50_state)
    key = "body.5.res_layer.1.weight"
    if corruption == "missing":
        del state[key]
    elif corruption == "unexpected":
        key = "body.5.res_layer.9.weight"
        state[key] = torch.zeros(3)
    else:
        state[key] = torch.zeros(1, 2, 3, 3)
    with pytest.raises(WeightLoadError, match=key.replace(".", r"\.")) as err:
        load_pretrained(one_block, ir50_path=save(tmp_path, state))
    assert {"missing": "missing keys", "unexpected": "unexpected keys", "shape": "shape mismatches"}[corruption] \
        in str(err.value)


def test_ir50_weights_rejected_for_torchvision_backbone(tmp_path):
    model = poster_tiny(image_backbone="resnet18", depth=1)
    with pytest.raises(WeightLoadError, match="image backbone"):
        load_pretrained(model, ir50_path=tmp_path / "unused.pth")


@pytest.mark.parametrize("name,probe", [
    ("resnet18", "layer3.0.conv1.weight"), ("resnet50", "layer3.5.conv3.weight"),
    ("efficientnet_b0", "features.5.2.block.1.0.weight")])
def test_local_torchvision_weights_load_and_tolerate_unbuilt_parts(tmp_path, name, probe):
    """A torchvision checkpoint saved to a local file (the field would hold ImageNet weights) loads
    into the stride-16 backbone; only the unbuilt tail is ignored, anything else is an error."""
    import torchvision
    torch.manual_seed(1)
    full = getattr(torchvision.models, name)(weights=None)
    model = poster_tiny(image_backbone=name, depth=1)
    assert not torch.equal(model.tv_back.get_parameter(probe), full.get_parameter(probe))
    ignored = load_pretrained(model, image_backbone_path=save(tmp_path, full.state_dict()))["image_backbone"]
    assert ignored and all(k.startswith(TV_UNUSED_PREFIXES[name]) for k in ignored)
    for key, value in model.tv_back.state_dict().items():
        assert torch.equal(value, full.state_dict()[key]), key
    bad = dict(full.state_dict(), **{"head.weight": torch.zeros(1)})
    with pytest.raises(WeightLoadError, match=r"head\.weight"):
        load_image_backbone(model, save(tmp_path, bad, "bad.pth"))


def test_pipeline_model_config_loads_local_backbone_weights(tmp_path):
    """`model.image_backbone_weights` / `model.ir50_weights` reach the loaders from the train config."""
    import torchvision

    from pipeline.config import ModelCfg
    from pipeline.train.builders import build_model
    full = torchvision.models.resnet18(weights=None)
    cfg = ModelCfg(overrides={"image_backbone": "resnet18", "depth": 1},
                   image_backbone_weights=str(save(tmp_path, full.state_dict())))
    model = build_model(cfg, num_classes=7)
    torch.testing.assert_close(model.tv_back.layer2[0].conv1.weight, full.layer2[0].conv1.weight, rtol=0, atol=0)
    donor = poster_tiny()
    path = save(tmp_path, {"state_dict": donor.ir_back.state_dict()}, "ir50.pth")
    model = build_model(ModelCfg(variant="tiny", ir50_weights=str(path)), num_classes=7)
    for key, value in model.ir_back.state_dict().items():
        assert torch.equal(value, donor.ir_back.state_dict()[key]), key
    assert not torch.equal(build_model(ModelCfg(variant="tiny"), 7).ir_back.input_layer[0].weight,
                           donor.ir_back.input_layer[0].weight)


@needs_manifests
def test_official_large_checkpoint_loads_every_entry(tmp_path):
    entries = read_manifest(MANIFESTS / "poster_v1_large_checkpoint.json")
    state = manifest_state_dict(entries)  # keys keep the DataParallel `module.` prefix
    path = save(tmp_path, {"iter": 216, "model_state_dict": state, "optimizer_state_dict": {"state": {}}})
    model = load_official_checkpoint(path, variant="large", num_classes=7)
    assert not model.training and not model.face_landback.training
    loaded = model.state_dict()
    assert set(state) - {"module." + k for k in loaded} == {"module." + k for k in V1_UNUSED_KEYS} - \
        {"module." + k for k in loaded}
    for key, value in loaded.items():  # every parameter and buffer (landmark BN stats included)
        assert torch.equal(value, state["module." + key]), key


@needs_manifests
def test_official_checkpoint_rejects_unknown_and_missing_keys(tmp_path):
    entries = read_manifest(MANIFESTS / "poster_v1_small_checkpoint.json")
    state = manifest_state_dict(entries)
    state["module.pyramid_fuse.extra_token"] = torch.zeros(1)
    del state["module.pyramid_fuse.blocks.3.block_s.norm4.bias"]
    with pytest.raises(WeightLoadError) as err:
        load_official_checkpoint(save(tmp_path, state), variant="small")
    assert "pyramid_fuse.extra_token" in str(err.value) and "blocks.3.block_s.norm4.bias" in str(err.value)


def test_parity_rule_values():
    w = deterministic_tensor("pyramid_fuse.blocks.0.block_l.attn_img.kv.weight", (1024, 512))
    assert w.dtype == torch.float32 and abs(w.std().item() - 512 ** -0.5) < 2e-3
    torch.testing.assert_close(w, deterministic_tensor("pyramid_fuse.blocks.0.block_l.attn_img.kv.weight", (1024, 512)))
    var = deterministic_tensor("x.bn.running_var", (64,))
    assert var.min() >= 0.75 and var.max() <= 1.25
    assert deterministic_tensor("x.bn.num_batches_tracked", (), torch.int64).item() == 0
