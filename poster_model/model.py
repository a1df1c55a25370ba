"""The POSTER V1 model, the named builders of both families (V2 lives in `model_v2`) and
`count_parameters`.

Top-level module names are the official ones (`ir_back`, `face_landback`, `ir_layer`, `pyramid_fuse`,
`se_block`, `head`), so an official checkpoint's `model_state_dict` (minus `module.` and the dead
entries) loads strictly into `poster_large()`.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .backbones import build_image_backbone, tokenize
from .config import PosterConfig
from .fusion import ClassificationHead, PyramidFusion, SEBlock
from .ir50 import resize_input
from .mobilefacenet import MobileFaceNet

LANDMARK_DIM = 512  # channels of MobileFaceNet's conv_6_sep map


class Poster(nn.Module):
    """POSTER V1: IR-50 image tokens x frozen MobileFaceNet landmark tokens -> cross-fusion pyramid.

    `forward(image, landmark_crop=None) -> (logits [B,K], features [B,D])`; features are the SE output
    (D = embed_dim) or, with `proj_dim > 0`, the projection head's output (D = proj_dim).
    """

    def __init__(self, cfg: PosterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        backbone = build_image_backbone(cfg.image_backbone, cfg.ir_units, cfg.ir_channels, cfg.input_size)
        # `ir_back` is the official key; torchvision backbones get their own name (other weights)
        self.image_key = "ir_back" if cfg.image_backbone == "ir50" else "tv_back"
        self.add_module(self.image_key, backbone)
        self.face_landback = MobileFaceNet()
        self.ir_layer = nn.Linear(4 * backbone.out_channels, cfg.embed_dim)
        # absent from the official 512-d model; lets narrower variants use the 512-d landmark net
        self.lm_proj = nn.Linear(LANDMARK_DIM, cfg.embed_dim) if cfg.embed_dim != LANDMARK_DIM else None
        self.pyramid_fuse = PyramidFusion(cfg)
        self.se_block = SEBlock(cfg.embed_dim)
        self.head = ClassificationHead(cfg.embed_dim, cfg.num_classes)
        self.proj_head = self._projection_head(cfg) if cfg.proj_dim > 0 else None
        if not cfg.landmark_trainable:
            self.face_landback.requires_grad_(False)
            self.face_landback.eval()

    @staticmethod
    def _projection_head(cfg: PosterConfig) -> nn.Module:
        # SupCon-style MLP head: metric losses act on it, so the classifier features stay untouched
        dim = cfg.embed_dim
        return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, cfg.proj_dim))

    @property
    def landmark_frozen_eval(self) -> bool:
        return not self.cfg.landmark_trainable and not self.cfg.landmark_bn_train_mode

    def train(self, mode: bool = True) -> "Poster":
        super().train(mode)
        if self.landmark_frozen_eval:
            self.face_landback.eval()  # frozen BN: keep the pretrained statistics
        return self

    def landmark_tokens(self, crop_112: torch.Tensor) -> torch.Tensor:
        """[B,3,112,112] -> [B,49,embed_dim] (row-major 7x7 grid of conv_6_sep); at input side S,
        [B,(S/16)^2,embed_dim]."""
        if self.cfg.landmark_trainable:
            fmap = self.face_landback(crop_112)
        else:
            with torch.no_grad():  # frozen: no autograd graph through the landmark net
                fmap = self.face_landback(crop_112)
        tokens = fmap.flatten(2).transpose(1, 2)
        return tokens if self.lm_proj is None else self.lm_proj(tokens)

    def forward(self, image: torch.Tensor, landmark_crop: torch.Tensor | None = None):
        size = self.cfg.input_size
        small = resize_input(image, size)  # the official nearest resize to 112; shared by both nets
        crop = small if landmark_crop is None else resize_input(landmark_crop, size)
        x_lm = self.landmark_tokens(crop)
        backbone = getattr(self, self.image_key)
        # IR-50 would resize to input_size itself; giving it `small` saves a second identical resize
        fmap = backbone(small if self.image_key == "ir_back" else image)
        x_img = self.ir_layer(tokenize(fmap, self.cfg.tokenizer))
        feat = self.se_block(self.pyramid_fuse(x_img, x_lm))
        logits = self.head(feat)
        return logits, (feat if self.proj_head is None else self.proj_head(feat))


def build_poster(cfg: PosterConfig) -> nn.Module:
    """The model of `cfg.arch`: `Poster` (V1) or `PosterV2`; both return (logits, features)."""
    if cfg.arch == "v2":
        from .model_v2 import PosterV2

        return PosterV2(cfg)
    return Poster(cfg)


VARIANT_OVERRIDES = {
    "small": dict(depth=4),
    "base": dict(depth=6),
    "large": dict(depth=8),
    # CPU smoke variant: thin IR-50, narrow fusion; same code as the real variants
    "tiny": dict(depth=2, embed_dim=128, num_heads=4, ir_units=(1, 1, 1), ir_channels=(16, 32, 64)),
    # POSTER V2 / POSTER++ (Talented-Q/POSTER_V2): ViT depth 2, width 768, 8 heads, MLP 4;
    # cross-attention scales 64/128/256 with 2/4/8 heads; FFN drop path linspace(0, 0.5, 5)[:3]
    "v2": dict(arch="v2", depth=2, embed_dim=768, num_heads=8, mlp_ratio=4.0, drop_path=0.5),
    # CPU smoke variant of V2: thin IR-50, narrow scales and ViT; same code as "v2"
    "v2_tiny": dict(arch="v2", depth=1, embed_dim=96, num_heads=2, mlp_ratio=4.0, drop_path=0.5,
                    ir_units=(1, 1, 1), ir_channels=(16, 32, 64), window_heads=(1, 1, 2)),
}
V1_VARIANTS = ("tiny", "small", "base", "large")
V2_VARIANTS = ("v2", "v2_tiny")


def variant_config(variant: str, num_classes: int = 7, **overrides) -> PosterConfig:
    """The PosterConfig of a named variant, with optional field overrides."""
    if variant not in VARIANT_OVERRIDES:
        raise ValueError(f"unknown POSTER variant {variant!r}; choose from {sorted(VARIANT_OVERRIDES)}")
    return replace(PosterConfig(num_classes=num_classes, **VARIANT_OVERRIDES[variant]), **overrides)


def poster_tiny(num_classes: int = 7, **overrides) -> Poster:
    return build_poster(variant_config("tiny", num_classes, **overrides))


def poster_small(num_classes: int = 7, **overrides) -> Poster:
    return build_poster(variant_config("small", num_classes, **overrides))


def poster_base(num_classes: int = 7, **overrides) -> Poster:
    return build_poster(variant_config("base", num_classes, **overrides))


def poster_large(num_classes: int = 7, **overrides) -> Poster:
    return build_poster(variant_config("large", num_classes, **overrides))


def poster_v2(num_classes: int = 7, **overrides) -> nn.Module:
    """POSTER V2 (POSTER++). `official_dead_modules=True` also builds the never-run official modules."""
    return build_poster(variant_config("v2", num_classes, **overrides))


def poster_v2_tiny(num_classes: int = 7, **overrides) -> nn.Module:
    return build_poster(variant_config("v2_tiny", num_classes, **overrides))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)
