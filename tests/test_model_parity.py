"""Faithfulness: an official-format checkpoint filled by poster-parity-rule-1 loads strictly and the
model's output equals a literal, functional re-reading of the official forward (spec §1.0-1.1)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from poster_model import load_official_checkpoint
from poster_parity import fixed_input, manifest_state_dict, read_manifest

MANIFESTS = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "manifests"
pytestmark = pytest.mark.skipif(not MANIFESTS.is_dir(), reason=f"manifests not found at {MANIFESTS}")


def bn(sd, t, p):
    return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                        sd[f"{p}.bias"], False, 0.0, 1e-5)


def ref_ir50(sd, x):
    p = "ir_back."
    h = F.conv2d(F.interpolate(x, size=112), sd[p + "input_layer.0.weight"], padding=1)
    h = F.prelu(bn(sd, h, p + "input_layer.1"), sd[p + "input_layer.2.weight"])
    for i in range(21):
        u, stride = f"{p}body.{i}.", 2 if i in (0, 3, 7) else 1
        if u + "shortcut_layer.0.weight" in sd:
            short = bn(sd, F.conv2d(h, sd[u + "shortcut_layer.0.weight"], stride=stride), u + "shortcut_layer.1")
        else:
            short = F.max_pool2d(h, 1, stride)
        r = F.conv2d(bn(sd, h, u + "res_layer.0"), sd[u + "res_layer.1.weight"], padding=1)
        r = F.conv2d(F.prelu(r, sd[u + "res_layer.2.weight"]), sd[u + "res_layer.3.weight"], stride=stride, padding=1)
        h = bn(sd, r, u + "res_layer.4") + short
    return h


def ref_conv_block(sd, t, p, stride=1, pad=0, groups=1, prelu=True):
    t = bn(sd, F.conv2d(t, sd[p + ".conv.weight"], stride=stride, padding=pad, groups=groups), p + ".bn")
    return F.prelu(t, sd[p + ".prelu.weight"]) if prelu else t


def ref_depthwise(sd, t, p, stride, residual):
    groups = sd[p + ".conv_dw.conv.weight"].shape[0]
    out = ref_conv_block(sd, t, p + ".conv")
    out = ref_conv_block(sd, out, p + ".conv_dw", stride, 1, groups)
    out = ref_conv_block(sd, out, p + ".project", prelu=False)
    return t + out if residual else out


def ref_mobilefacenet(sd, x):
    p = "face_landback."
    t = ref_conv_block(sd, F.interpolate(x, size=112), p + "conv1", 2, 1)
    t = ref_conv_block(sd, t, p + "conv2_dw", 1, 1, 64)
    for name, n in (("conv_23", 0), ("conv_3", 4), ("conv_34", 0), ("conv_4", 6), ("conv_45", 0), ("conv_5", 2)):
        if n == 0:
            t = ref_depthwise(sd, t, p + name, 2, False)
        for j in range(n):
            t = ref_depthwise(sd, t, f"{p}{name}.model.{j}", 1, True)
    return ref_conv_block(sd, t, p + "conv_6_sep")


def ref_attention(sd, p, q_tokens, kv_tokens, heads=8):
    b, n, c = kv_tokens.shape
    kv = F.linear(kv_tokens, sd[p + ".kv.weight"], sd[p + ".kv.bias"]).reshape(b, n, 2, heads, c // heads)
    k, v = kv.permute(2, 0, 3, 1, 4)
    q = q_tokens.reshape(b, n, heads, c // heads).transpose(1, 2)
    attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
    return F.linear((attn @ v).transpose(1, 2).reshape(b, n, c), sd[p + ".proj.weight"], sd[p + ".proj.bias"])


def ref_block(sd, p, x):
    ln = lambda t, name: F.layer_norm(t, t.shape[-1:], sd[f"{p}.{name}.weight"], sd[f"{p}.{name}.bias"], 1e-6)
    mlp = lambda t, name: F.linear(F.gelu(F.linear(t, sd[f"{p}.{name}.fc1.weight"], sd[f"{p}.{name}.fc1.bias"])),
                                   sd[f"{p}.{name}.fc2.weight"], sd[f"{p}.{name}.fc2.bias"])
    x_img, x_lm = x[:, :50], x[:, 50:]
    n1 = ln(x, "norm1")
    x_img = x_img + ref_attention(sd, p + ".attn_img", n1[:, 50:], n1[:, :50])  # Q = landmark half
    x_img = x_img + mlp(ln(x_img, "norm2"), "mlp1")
    n3 = ln(x, "norm3")
    x_lm = x_lm + ref_attention(sd, p + ".attn_lm", n3[:, :50], n3[:, 50:])  # Q = image half
    x_lm = x_lm + mlp(ln(x_lm, "norm4"), "mlp2")
    return F.conv1d(torch.cat((x_img, x_lm), 1), sd[p + ".conv.weight"], sd[p + ".conv.bias"])


def ref_forward(sd, x, depth):
    b = x.shape[0]
    lm = ref_mobilefacenet(sd, x).view(b, -1, 49).transpose(1, 2)
    img = F.linear(ref_ir50(sd, x).view(-1, 49, 1024), sd["ir_layer.weight"], sd["ir_layer.bias"])
    f = "pyramid_fuse."
    img = torch.cat((img.mean(1, keepdim=True), img), 1) + sd[f + "pos_embed"]
    z = torch.cat((img, torch.cat((lm.mean(1, keepdim=True), lm), 1)), 1)
    z_m = F.conv1d(z, sd[f + "downsample_m.weight"], sd[f + "downsample_m.bias"], stride=2)
    z_s = F.conv1d(z, sd[f + "downsample_s.weight"], sd[f + "downsample_s.bias"], stride=4)
    for i in range(depth):
        p = f"{f}blocks.{i}"
        z, z_m, z_s = (ref_block(sd, f"{p}.block_{lv}", t) for lv, t in (("l", z), ("m", z_m), ("s", z_s)))
        z_m = F.conv_transpose1d(z_s, sd[p + ".upsample_s.weight"], sd[p + ".upsample_s.bias"], stride=2) + z_m
        z = z + F.conv_transpose1d(z_m, sd[p + ".upsample_m.weight"], sd[p + ".upsample_m.bias"], stride=2)
    v = F.layer_norm(z, (512,), sd[f + "norm.weight"], sd[f + "norm.bias"], 1e-6)[:, 0]
    v = v * torch.sigmoid(F.linear(torch.relu(F.linear(v, sd["se_block.linear1.weight"], sd["se_block.linear1.bias"])),
                                   sd["se_block.linear2.weight"], sd["se_block.linear2.bias"]))
    return F.linear(v, sd["head.linear.weight"], sd["head.linear.bias"]), v


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    entries = read_manifest(MANIFESTS / "poster_v1_small_checkpoint.json")
    state = manifest_state_dict(entries)
    path = tmp_path_factory.mktemp("ckpt") / "small.pth"
    torch.save({"iter": 3, "model_state_dict": state, "optimizer_state_dict": {}}, path)
    return path, {k[len("module."):]: v for k, v in state.items()}


@pytest.fixture(scope="module")
def small_model(small_checkpoint):
    return load_official_checkpoint(small_checkpoint[0], variant="small", num_classes=7)


def test_official_forward_matches_functional_reference(small_checkpoint, small_model):
    sd, model = small_checkpoint[1], small_model
    assert not model.training
    x = fixed_input()
    with torch.no_grad():
        logits, feat = model(x)
        ref_logits, ref_feat = ref_forward(sd, x, depth=4)
    assert logits.abs().max() > 0.1 and not torch.allclose(logits[0], logits[1])  # informative rule
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(feat, ref_feat, rtol=1e-4, atol=1e-4)


def test_swapping_upsample_s_and_m_changes_outputs(small_model):
    model = small_model  # last test of the module: it is free to alter the weights
    x = fixed_input()
    with torch.no_grad():
        before = model(x)[0]
        for block in model.pyramid_fuse.blocks:
            w_s, w_m = block.upsample_s.weight.clone(), block.upsample_m.weight.clone()
            block.upsample_s.weight.copy_(w_m)
            block.upsample_m.weight.copy_(w_s)
        after = model(x)[0]
    assert (before - after).abs().max() > 1e-3
