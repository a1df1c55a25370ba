"""MobileFaceNet 68-point landmark net (112x112 input), used frozen as POSTER's landmark feature extractor.

Module names follow the official `mobilefacenet_model_best.pth.tar` so its 333 entries load strictly.
POSTER uses only the `conv_6_sep` features [B,512,7,7]. The landmark regressor (`output_layer`, GDC) is
kept as frozen parameters so the pretrained file loads whole and the parameter count matches the
spec; POSTER never executes it (the official model threw its output away). `landmarks()` runs it:
`pipeline.pretrain landmarks` trains the whole net through it, as the official file was trained.
"""
from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    """Conv (no bias) -> BN -> optional PReLU. `prelu=False` is the official 'Linear_block'."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1, prelu: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.prelu = nn.PReLU(out_ch) if prelu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class DepthWise(nn.Module):
    """Inverted residual: 1x1 expand (PReLU) -> depthwise 3x3 (PReLU) -> 1x1 project, optional identity."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.conv = ConvBlock(in_ch, groups)
        self.conv_dw = ConvBlock(groups, groups, 3, stride, 1, groups=groups)
        self.project = ConvBlock(groups, out_ch, prelu=False)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class Residual(nn.Module):
    """`num` residual DepthWise units at constant width (official name `model` for the Sequential)."""

    def __init__(self, ch: int, num: int, groups: int) -> None:
        super().__init__()
        self.model = nn.Sequential(*[DepthWise(ch, ch, groups, 1, True) for _ in range(num)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class GDCHead(nn.Module):
    """Landmark regressor (global depthwise conv -> Linear -> BN1d). Built for weight loading only."""

    def __init__(self, ch: int = 512, out: int = 136) -> None:
        super().__init__()
        self.conv_6_dw = ConvBlock(ch, ch, 7, groups=ch, prelu=False)
        self.linear = nn.Linear(ch, out, bias=False)
        self.bn = nn.BatchNorm1d(out)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """conv_6_sep map [B,512,7,7] -> [B,136] (x0,y0,x1,y1,... as the official net's output)."""
        return self.bn(self.linear(self.conv_6_dw(fmap).flatten(1)))


class MobileFaceNet(nn.Module):
    """[B,3,112,112] -> conv_6_sep features [B,512,7,7]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvBlock(3, 64, 3, 2, 1)
        self.conv2_dw = ConvBlock(64, 64, 3, 1, 1, groups=64)
        self.conv_23 = DepthWise(64, 64, 128, 2, False)
        self.conv_3 = Residual(64, 4, 128)
        self.conv_34 = DepthWise(64, 128, 256, 2, False)
        self.conv_4 = Residual(128, 6, 256)
        self.conv_45 = DepthWise(128, 128, 512, 2, False)
        self.conv_5 = Residual(128, 2, 256)
        self.conv_6_sep = ConvBlock(128, 512)
        self.output_layer = GDCHead()
        self.output_layer.requires_grad_(False)  # never executed, so never trained

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)[-1]

    def landmarks(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,112,112] -> 68 points [B,136] through the GDC regressor (trained by pretraining)."""
        return self.output_layer(self.features(x)[-1])

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The maps POSTER V2 uses: conv_3 [B,64,28,28], conv_4 [B,128,14,14], conv_6_sep [B,512,7,7]."""
        c3 = self.conv_3(self.conv_23(self.conv2_dw(self.conv1(x))))
        c4 = self.conv_4(self.conv_34(c3))
        return c3, c4, self.conv_6_sep(self.conv_5(self.conv_45(c4)))
