"""IR-50 image backbone (ArcFace "IR" ResNet, mode 'ir'), cut after stage 3 as POSTER uses it.

Module names follow the official `ir50.pth` (`input_layer.*`, `body.N.res_layer.*`,
`body.N.shortcut_layer.*`) so the file loads strictly. The official model also builds a stage-4-sized
`output_layer` (12.85 M parameters) that is never called; it is not built here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BACKBONE_SIZE = 112  # the official forward resizes every input to 112x112 (nearest)


def resize_112(x: torch.Tensor) -> torch.Tensor:
    """The official `F.interpolate(x, size=112)`: nearest-neighbour; a no-op at 112 input."""
    return resize_input(x, BACKBONE_SIZE)


def resize_input(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize to the model's input side: a no-op at that size; the official nearest resize to 112;
    an antialiased bilinear resize to any other side (nearest down from 112 would alias)."""
    if x.shape[-2:] == (size, size):
        return x
    if size == BACKBONE_SIZE:
        return F.interpolate(x, size=size)
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


class Subsample(nn.Module):
    """Identity shortcut with stride: equals the official `MaxPool2d(1, stride)` (a 1x1 max is a copy),
    done as a strided view, which is cheaper and exact."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]


class BottleneckIR(nn.Module):
    """BN -> conv3x3 -> PReLU -> conv3x3(stride) -> BN, plus a shortcut; no activation after the sum."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if in_ch == out_ch:
            self.shortcut_layer: nn.Module = Subsample(stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False),
            nn.PReLU(out_ch),
            nn.Conv2d(out_ch, out_ch, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def ir_stages(units: tuple, channels: tuple) -> list[list[BottleneckIR]]:
    """The units of each stage; the first unit of every stage downsamples (stride 2)."""
    stages, in_ch = [], channels[0]
    for n_units, out_ch in zip(units, channels):
        stages.append([BottleneckIR(in_ch, out_ch, 2)] + [BottleneckIR(out_ch, out_ch, 1) for _ in range(n_units - 1)])
        in_ch = out_ch
    return stages


def ir50_stem(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), nn.PReLU(channels))


def ir50_output_layer() -> nn.Sequential:
    """The official, never-called `output_layer` (BN2d, Dropout, Flatten, Linear 25088->512, BN1d):
    built only for parameter-count parity with the official modules."""
    return nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.0), nn.Flatten(), nn.Linear(512 * 7 * 7, 512),
                         nn.BatchNorm1d(512))


class IR50(nn.Module):
    """Stages 1-3 of IR-50: [B,3,H,W] -> (resize to `input_size`, 112 officially) -> [B,C3,S/8,S/8]
    ([B,256,14,14] for the real model).

    `units` / `channels` give the unit count and width of each stage; (3,4,14) / (64,128,256) is the
    official network, narrower values give the CPU smoke variant with the same code.
    """

    def __init__(self, units: tuple = (3, 4, 14), channels: tuple = (64, 128, 256),
                 input_size: int = BACKBONE_SIZE) -> None:
        super().__init__()
        self.input_size = input_size
        self.input_layer = ir50_stem(channels[0])
        self.body = nn.Sequential(*[u for stage in ir_stages(units, channels) for u in stage])
        self.out_channels = channels[-1]
        # NHWC weights too, or every convolution call re-lays-out its weight (load_state_dict and
        # optimiser state keep this layout; state-dict values and names are unchanged)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last: oneDNN's NHWC convolutions (and cuDNN's with bf16) are faster than NCHW;
        # the values are the same, and the raw tokenizer makes the output contiguous NCHW again
        x = resize_input(x, self.input_size).contiguous(memory_format=torch.channels_last)
        return self.body(self.input_layer(x))


class IR50Split(nn.Module):
    """POSTER V2's IR-50: the same units as `IR50`, with stages named `body1/body2/body3` (the V2
    checkpoint's names), returning all three stage maps: [B,64,56,56], [B,128,28,28], [B,256,14,14]
    at the official widths (any input size: it resizes to 112 first)."""

    def __init__(self, units: tuple = (3, 4, 14), channels: tuple = (64, 128, 256)) -> None:
        super().__init__()
        self.input_layer = ir50_stem(channels[0])
        body1, body2, body3 = ir_stages(units, channels)
        self.body1, self.body2, self.body3 = nn.Sequential(*body1), nn.Sequential(*body2), nn.Sequential(*body3)
        self.to(memory_format=torch.channels_last)  # see IR50

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.input_layer(resize_112(x).contiguous(memory_format=torch.channels_last))
        x1 = self.body1(x)
        x2 = self.body2(x1)
        return x1, x2, self.body3(x2)
