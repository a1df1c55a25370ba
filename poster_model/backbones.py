"""Image backbones and the feature-map -> 49 image tokens step.

Every image backbone ends in a [B,C,14,14] map, which a tokenizer turns into 49 tokens of 4C values
and `ir_layer` (Linear 4C -> embed_dim) embeds:

* IR-50 (official): stages 1-3 at 112x112 input -> [B,256,14,14] -> 49 x 1024.
* torchvision ResNet-18 / ResNet-50: stem + layer1..layer3, the stride-16 map (14x14 at a 224 input;
  256 / 1024 channels) -> 49 x 1024 / 49 x 4096. layer4 and fc are not built.
* torchvision EfficientNet-B0: `features[0:6]`, the stride-16 map (112 channels) -> 49 x 448.
  The later stages and the classifier are not built.

torchvision maps at another input size are adaptive-average-pooled to 14x14 first. torchvision
backbones see the image at its own resolution (ImageNet models), unlike IR-50 which resizes to 112.
No weights are downloaded: they start random; `poster_model.weights.load_image_backbone` loads a
local torchvision state dict.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ir50 import IR50

GRID = 14  # feature-map side before tokenisation at the official 112 input; 14x14 -> 7x7 = 49 tokens

# channels of the stride-16 map of each torchvision backbone
TV_CHANNELS = {"resnet18": 256, "resnet50": 1024, "efficientnet_b0": 112}


def tokenize(fmap: torch.Tensor, mode: str) -> torch.Tensor:
    """[B,C,14,14] -> [B,49,4C]; any even side 2g: [B,C,2g,2g] -> [B,g*g,4C].

    "raw" is the official `view(-1, 49, 1024)` of the contiguous (C,H,W) buffer: each token is a run of
    4C consecutive values (spanning parts of several channel planes), not a spatial patch. It must be
    kept to run official weights. "patch" is a true 2x2 space-to-depth: token i is grid cell i of 7x7,
    holding the (c, dy, dx) values of its 2x2 patch.
    """
    b, c, h, w = fmap.shape
    if mode == "raw":
        n = (h // 2) * (w // 2)
        return fmap.contiguous().view(b, n, c * h * w // n)
    x = fmap.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), 4 * c)


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier cut at stride 16, with torchvision's own module names (for loading)."""

    def __init__(self, name: str, grid: int = GRID) -> None:
        super().__init__()
        self.name = name
        self.grid = grid
        import torchvision.models  # here, not at the top: importing it pulls in torch._dynamo (~3 s per
        # process on 2 cores), a cost every Ray worker, CLI and served model paid for an IR-50 model

        net = getattr(torchvision.models, name)(weights=None)
        if name.startswith("resnet"):
            for part in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"):
                self.add_module(part, getattr(net, part))
        else:
            self.features = net.features[:6]
        self.out_channels = TV_CHANNELS[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.name.startswith("resnet"):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer3(self.layer2(self.layer1(x)))
        else:
            x = self.features(x)
        if x.shape[-2:] != (self.grid, self.grid):
            x = F.adaptive_avg_pool2d(x, self.grid)
        return x


def build_image_backbone(name: str, ir_units: tuple, ir_channels: tuple, input_size: int = 112) -> nn.Module:
    """The image backbone of `PosterConfig.image_backbone`; `.out_channels` is C of its map, whose side
    is input_size/8 (14 at the official 112)."""
    if name == "ir50":
        return IR50(ir_units, ir_channels, input_size)
    if name in TV_CHANNELS:
        return TorchvisionBackbone(name, input_size // 8)
    raise ValueError(f"unknown image backbone {name!r}")
