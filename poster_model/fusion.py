"""POSTER V1 cross-fusion "pyramid" transformer (official name `pyramid_fuse`).

Token layout everywhere: 100 tokens = [image cls, 49 image tokens, landmark cls, 49 landmark tokens]
(at the official 112 input; `PosterConfig.input_size` S gives (S/16)^2 tokens per stream).
The pyramid levels l/m/s differ in *embedding width* (C, C/2, C/4), made by Conv1d over the embedding
axis with the 100 tokens as channels; every layer fuses them top-down with ConvTranspose1d.
Module names follow the official checkpoint (`blocks.i.block_l.attn_img.kv`, `upsample_s`, ...).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LEVEL_DIVISOR, PosterConfig


def token_layout(cfg: PosterConfig) -> tuple[int, int]:
    """(tokens per stream with its cls token, tokens of both streams) for `cfg.input_size`:
    (50, 100) at the official 112."""
    half = cfg.tokens_per_stream + 1
    return half, 2 * half


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class SEBlock(nn.Module):
    """Squeeze-excitation on a vector with full-rank (no bottleneck) Linear layers, as in POSTER."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, dim)
        self.linear2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.linear2(torch.relu(self.linear1(x))))


class ClassificationHead(nn.Module):
    """The final Linear, shared by V1 and V2 (official name `head.linear`)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class DropPath(nn.Module):
    """Stochastic depth per sample (drops the whole residual branch of some samples in training)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class CrossAttention(nn.Module):
    """K,V from one stream (fused Linear C->2C); Q is the *other* stream's normed tokens, unprojected.

    Official quirk kept on purpose: there is no learned Q projection, and output row i (query i of
    the other stream) is added onto token i of this stream purely by index.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        b, n, c = source.shape
        h = self.num_heads
        k, v = self.kv(source).view(b, n, 2, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        q = query.reshape(b, n, h, c // h).transpose(1, 2)
        # default SDPA scale = head_dim^-0.5, the official (C/num_heads)^-0.5
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def token_mix(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` for a kernel-1 Conv1d over the token axis, as one batched matmul (+ bias).

    Same function as the official Conv1d(100, 100, 1); CPU convolution kernels are several times
    slower for this shape, whose FLOPs are negligible.
    """
    w = conv.weight.squeeze(-1)
    return torch.baddbmm(conv.bias[:, None], w.expand(x.shape[0], -1, -1), x)


class Block(nn.Module):
    """One cross-fusion layer at one width: image update, landmark update, 1x1 token-mixing conv."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop_path: float,
                 half: int) -> None:
        super().__init__()
        self.half = half
        hidden = int(dim * mlp_ratio)
        self.norm1, self.norm2, self.norm3, self.norm4 = (layer_norm(dim) for _ in range(4))
        self.attn_img = CrossAttention(dim, num_heads, qkv_bias)
        self.attn_lm = CrossAttention(dim, num_heads, qkv_bias)
        self.mlp1, self.mlp2 = Mlp(dim, hidden), Mlp(dim, hidden)
        self.drop_path = DropPath(drop_path)
        self.conv = nn.Conv1d(2 * half, 2 * half, 1)  # mixes all 100 tokens (channels) at each position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # split, not two slices: its backward is one cat instead of two zero-filled full-size grads
        x_img, x_lm = x.split(self.half, dim=1)
        # both updates read the layer *input* x (the landmark update does not see the new x_img)
        n_img, n_lm = self.norm1(x).split(self.half, dim=1)
        x_img = x_img + self.drop_path(self.attn_img(n_lm, n_img))
        x_img = x_img + self.drop_path(self.mlp1(self.norm2(x_img)))
        n_img, n_lm = self.norm3(x).split(self.half, dim=1)
        x_lm = x_lm + self.drop_path(self.attn_lm(n_img, n_lm))
        x_lm = x_lm + self.drop_path(self.mlp2(self.norm4(x_lm)))
        return token_mix(self.conv, torch.cat((x_img, x_lm), dim=1))


def up_conv(factor: int, tokens: int) -> nn.ConvTranspose1d:
    return nn.ConvTranspose1d(tokens, tokens, factor, factor)


class PyramidBlock(nn.Module):
    """Blocks at each level, then top-down fusion: Z_m += up_s(Z_s); Z_l += up_m(Z_m).

    Official naming: `upsample_s` maps s->m and `upsample_m` maps m->l (swapping them still loads).
    With levels ('l','s') the single `upsample_s` maps s->l directly (kernel/stride 4).
    """

    def __init__(self, cfg: PosterConfig, drop_path: float) -> None:
        super().__init__()
        self.levels = cfg.levels
        half, tokens = token_layout(cfg)
        for level in self.levels:
            dim = cfg.embed_dim // LEVEL_DIVISOR[level]
            block = Block(dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, drop_path, half)
            self.add_module(f"block_{level}", block)
        if "m" in self.levels:
            self.upsample_m = up_conv(2, tokens)
            if "s" in self.levels:
                self.upsample_s = up_conv(2, tokens)
        elif "s" in self.levels:
            self.upsample_s = up_conv(4, tokens)

    def forward(self, xs: list) -> list:
        xs = [getattr(self, f"block_{level}")(x) for level, x in zip(self.levels, xs)]
        if len(xs) == 3:
            x_l, x_m, x_s = xs
            x_m = self.upsample_s(x_s) + x_m
            return [x_l + self.upsample_m(x_m), x_m, x_s]
        if len(xs) == 2:
            up = self.upsample_m if "m" in self.levels else self.upsample_s
            return [xs[0] + up(xs[1]), xs[1]]
        return xs


class PyramidFusion(nn.Module):
    """(image tokens [B,49,C], landmark tokens [B,49,C]) -> image cls feature [B,C]."""

    def __init__(self, cfg: PosterConfig) -> None:
        super().__init__()
        self.levels = cfg.levels
        half, tokens = token_layout(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, half, cfg.embed_dim))  # image stream only
        if "m" in self.levels:
            self.downsample_m = nn.Conv1d(tokens, tokens, 2, 2)
        if "s" in self.levels:
            self.downsample_s = nn.Conv1d(tokens, tokens, 4, 4)
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.Sequential(*[PyramidBlock(cfg, r) for r in rates])
        self.norm = layer_norm(cfg.embed_dim)

    def forward(self, x_img: torch.Tensor, x_lm: torch.Tensor) -> torch.Tensor:
        # class tokens are the token means (the official learned cls_token is never used)
        x_img = torch.cat((x_img.mean(dim=1, keepdim=True), x_img), dim=1) + self.pos_embed
        x_lm = torch.cat((x_lm.mean(dim=1, keepdim=True), x_lm), dim=1)
        x = torch.cat((x_img, x_lm), dim=1)
        xs = [x]
        if "m" in self.levels:
            xs.append(self.downsample_m(x))
        if "s" in self.levels:
            xs.append(self.downsample_s(x))
        x_l = self.blocks(xs)[0]
        return self.norm(x_l[:, 0])  # LayerNorm is per token: norm only the image cls token
