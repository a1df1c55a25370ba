"""POSTER V2 (POSTER++, Mao et al. 2023) in plain PyTorch, written from ../shared/docs/poster_spec.md §1.2.

Frozen MobileFaceNet maps (conv_3, conv_4, conv_6_sep -> last_face_conv) are the *queries* of a
window cross-attention over IR-50 stage maps (stride-2 aligned: 28², 14², 7²), one scale each;
the three results are embedded to 3 x 49 tokens of width 768 and fused by a 2-block ViT.

Module names are the official ones (`ir_back.body1..3`, `face_landback`, `last_face_conv`,
`conv{i}`, `window{i}.norm`, `attn{i}`, `ffn{i}`, `embed_q/k/v`, `VIT.*`), so an official checkpoint's
`state_dict` minus `module.` and the dead entries loads strictly. The dead official modules are built
only with `PosterConfig(official_dead_modules=True)`.

Because every input is resized to 112 inside the model, the window size equals the map size at every
scale: one window per image, so the "window" attention is global attention with a Swin relative
position bias (the official code only works in that case too).

`forward(image, landmark_crop=None) -> (logits [B,K], features [B,embed_dim])`, features = the SE
output the head reads (or the projection head's output with `proj_dim > 0`), the same contract as V1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import PosterConfig
from .fusion import ClassificationHead, DropPath, Mlp, SEBlock
from .ir50 import IR50Split, ir50_output_layer, resize_112
from .mobilefacenet import MobileFaceNet

FACE_CHANNELS = (64, 128, 512)  # MobileFaceNet conv_3, conv_4, conv_6_sep
N_SCALE_TOKENS = 49  # every scale is embedded to a 7x7 grid
LAYER_SCALE_INIT = 1e-5


def relative_position_index(ws: int) -> torch.Tensor:
    """Swin index into a (2ws-1)² table: entry (i, j) encodes the offset of grid cell i from cell j."""
    yy, xx = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    y, x = yy.flatten(), xx.flatten()
    dy = y[:, None] - y[None, :] + ws - 1
    dx = x[:, None] - x[None, :] + ws - 1
    return (dy * (2 * ws - 1) + dx).long()


class WindowNorm(nn.Module):
    """Official `window{i}`: channel-last LayerNorm (eps 1e-5). Returns the (single) window's tokens
    [B,H*W,C] and the normed map [B,H,W,C], which is also the FFN's residual shortcut."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm(fmap.permute(0, 2, 3, 1))
        b, h, w, c = x.shape
        return x.reshape(b, h * w, c), x


class WindowAttentionGlobal(nn.Module):
    """K,V = Linear(c, 2c) of the image tokens; Q = the landmark map, split into heads with no
    projection; softmax(Q Kᵀ / sqrt(head_dim) + relative-position bias) V -> proj."""

    def __init__(self, dim: int, num_heads: int, window: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 2 * dim, bias=qkv_bias)  # official name; holds K and V only
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.empty((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # persistent: official checkpoints carry it and their strict load requires it
        self.register_buffer("relative_position_index", relative_position_index(window))

    def bias(self) -> torch.Tensor:
        n = self.relative_position_index.shape[0]
        table = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return table.view(n, n, self.num_heads).permute(2, 0, 1)  # [heads, N, N]

    def forward(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """x: normed image tokens [B,N,C]; queries: landmark tokens [B,N,C] (same grid, same width)."""
        b, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        k, v = self.qkv(x).view(b, n, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        q = queries.reshape(b, n, h, d).transpose(1, 2)  # channel = head * d + j, as the official split
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias().unsqueeze(0).to(q.dtype),
                                             scale=d ** -0.5)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class FeedForward(nn.Module):
    """Official `ffn{i}`: x = shortcut + DP(γ1·attn); x = x + DP(γ2·MLP(LN(x))); -> [B,C,H,W]."""

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma1 = nn.Parameter(torch.full((dim,), LAYER_SCALE_INIT))
        self.gamma2 = nn.Parameter(torch.full((dim,), LAYER_SCALE_INIT))
        self.drop_path = DropPath(drop_path)

    def forward(self, attn: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        # the residual is the LayerNormed map (official), not the raw aligned feature
        x = shortcut + self.drop_path(self.gamma1 * attn.view(shortcut.shape))
        x = x + self.drop_path(self.gamma2 * self.mlp(self.norm(x)))
        return x.permute(0, 3, 1, 2)


class ViTAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # scale head_dim^-0.5, as the official
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    """Pre-norm block (LayerNorm eps 1e-6). `dead_conv` builds the official unused Conv1d(148,148,1)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, tokens: int,
                 dead_conv: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ViTAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if dead_conv:
            self.conv = nn.Conv1d(tokens, tokens, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class FusionViT(nn.Module):
    """Official `VIT`: learned cls + pos_embed over the 147 scale tokens, blocks, LN, cls -> SE -> head."""

    def __init__(self, cfg: PosterConfig) -> None:
        super().__init__()
        dim, tokens = cfg.embed_dim, 3 * N_SCALE_TOKENS + 1
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.empty(1, tokens, dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, tokens,
                                               cfg.official_dead_modules) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.se_block = SEBlock(dim)
        self.head = ClassificationHead(dim, cfg.num_classes)
        if cfg.official_dead_modules:
            self._build_dead(dim)

    def _build_dead(self, dim: int) -> None:
        """Modules the official `VisionTransformer` builds but never calls (1,619,021 parameters)."""
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(256, dim, 1)
        self.CON1 = nn.Conv2d(256, dim, 1, bias=False)
        self.IRLinear1 = nn.Linear(1024, dim)
        self.IRLinear2 = nn.Linear(dim, 512)
        self.eca_block = nn.Module()
        self.eca_block.conv = nn.Conv1d(1, 1, 5, padding=2, bias=False)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B,147,D] scale tokens -> SE-weighted cls feature [B,D] (what the head reads)."""
        x = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), 1) + self.pos_embed
        return self.se_block(self.norm(self.blocks(x))[:, 0])


def _init_vit(module: nn.Module) -> None:
    """The official ViT init: Linear trunc-normal std 0.01 with zero bias, Conv kaiming fan_out."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride, 1)


class PosterV2(nn.Module):
    """POSTER V2. `forward(image, landmark_crop=None) -> (logits, features)`; see the module doc."""

    image_key = "ir_back"  # the image backbone's attribute, as on V1

    def __init__(self, cfg: PosterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dims, dim = cfg.ir_channels, cfg.embed_dim
        self.face_landback = MobileFaceNet()
        self.ir_back = IR50Split(cfg.ir_units, dims)
        if cfg.official_dead_modules:
            self.ir_back.output_layer = ir50_output_layer()
        self.last_face_conv = conv3x3(FACE_CHANNELS[2], dims[2])
        # not in the official model (its widths match): narrower variants project the landmark maps
        for i in (0, 1):
            if dims[i] != FACE_CHANNELS[i]:
                self.add_module(f"face_proj{i + 1}", nn.Conv2d(FACE_CHANNELS[i], dims[i], 1))
        rates = torch.linspace(0, cfg.drop_path, 5).tolist()
        for i, (c, heads, ws) in enumerate(zip(dims, cfg.window_heads, (28, 14, 7)), start=1):
            self.add_module(f"conv{i}", conv3x3(c, c, 2))
            self.add_module(f"window{i}", WindowNorm(c))
            self.add_module(f"attn{i}", WindowAttentionGlobal(c, heads, ws, cfg.qkv_bias))
            self.add_module(f"ffn{i}", FeedForward(c, 4.0, rates[i - 1]))
        self.embed_q = nn.Sequential(conv3x3(dims[0], dim, 2), conv3x3(dim, dim, 2))
        self.embed_k = nn.Sequential(conv3x3(dims[1], dim, 2))
        self.embed_v = nn.Module()
        self.embed_v.proj = nn.Conv2d(dims[2], dim, 1)
        self.VIT = FusionViT(cfg)
        _init_vit(self.VIT)
        self.proj_head = (nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, cfg.proj_dim))
                          if cfg.proj_dim > 0 else None)
        if not cfg.landmark_trainable:
            self.face_landback.requires_grad_(False)
            self.face_landback.eval()

    @property
    def head(self) -> nn.Module:
        """The classifier (`VIT.head`, with `.linear`), under the name V1 uses."""
        return self.VIT.head

    @property
    def landmark_frozen_eval(self) -> bool:
        return not self.cfg.landmark_trainable and not self.cfg.landmark_bn_train_mode

    def train(self, mode: bool = True) -> "PosterV2":
        super().train(mode)
        if self.landmark_frozen_eval:
            self.face_landback.eval()  # frozen BN: keep the pretrained statistics
        return self

    def landmark_queries(self, crop_112: torch.Tensor) -> list[torch.Tensor]:
        """The three landmark maps as query tokens [B,N_i,C_i] (row-major grid, channels last)."""
        with torch.set_grad_enabled(self.cfg.landmark_trainable and torch.is_grad_enabled()):
            maps = list(self.face_landback.features(crop_112))
        maps[2] = self.last_face_conv(maps[2])
        for i in (0, 1):
            proj = getattr(self, f"face_proj{i + 1}", None)
            if proj is not None:
                maps[i] = proj(maps[i])
        return [m.flatten(2).transpose(1, 2) for m in maps]

    def scale(self, i: int, fmap: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Scale i: align (stride 2) -> LN -> window cross-attention -> FFN; [B,C,H,W] out."""
        tokens, shortcut = getattr(self, f"window{i}")(getattr(self, f"conv{i}")(fmap))
        return getattr(self, f"ffn{i}")(getattr(self, f"attn{i}")(tokens, queries), shortcut)

    def forward(self, image: torch.Tensor, landmark_crop: torch.Tensor | None = None):
        small = resize_112(image)  # the official nearest resize, shared by both nets
        crop = small if landmark_crop is None else resize_112(landmark_crop)
        queries = self.landmark_queries(crop)
        o1, o2, o3 = (self.scale(i, f, q) for i, f, q in zip((1, 2, 3), self.ir_back(small), queries))
        tokens = torch.cat([self.embed_q(o1).flatten(2).transpose(1, 2),
                            self.embed_k(o2).flatten(2).transpose(1, 2),
                            self.embed_v.proj(o3).flatten(2).transpose(1, 2)], 1)
        feat = self.VIT.features(tokens)
        logits = self.VIT.head(feat)
        return logits, (feat if self.proj_head is None else self.proj_head(feat))


class LogitsOnly(nn.Module):
    """Wraps a POSTER model so `forward` returns only the logits (the official V2 contract)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, landmark_crop: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(image, landmark_crop)[0]
