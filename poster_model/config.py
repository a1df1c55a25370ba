"""`PosterConfig`: every knob of the POSTER (V1) model as plain, YAML-settable fields."""
from __future__ import annotations

from dataclasses import dataclass

IMAGE_BACKBONES = ("ir50", "resnet18", "resnet50", "efficientnet_b0")
TOKENIZERS = ("raw", "patch")
LEVEL_DIVISOR = {"l": 1, "m": 2, "s": 4}  # embedding width of each pyramid level = embed_dim // divisor


@dataclass
class PosterConfig:
    """POSTER V1 hyper-parameters. The defaults are the official `large` model.

    Fields are plain str/int/float/bool/tuple so a YAML config tree can set each of them.
    """

    num_classes: int = 7
    depth: int = 8  # pyramid blocks: small 4, base 6, large 8
    embed_dim: int = 512
    num_heads: int = 8
    mlp_ratio: float = 2.0
    drop_path: float = 0.1  # max of linspace(0, drop_path, depth), one value per pyramid block
    pyramid_levels: tuple = ("l", "m", "s")
    image_backbone: str = "ir50"
    ir_units: tuple = (3, 4, 14)
    ir_channels: tuple = (64, 128, 256)
    tokenizer: str = "raw"  # "raw" = official memory reshape; "patch" = true 2x2 space-to-depth
    landmark_trainable: bool = False
    # The official code lets the frozen landmark net's BN statistics drift under model.train();
    # by default we keep that net in eval mode so its features stay those of the pretrained file.
    landmark_bn_train_mode: bool = False
    proj_dim: int = 0  # >0: projection head whose output becomes `features` (for metric losses)
    qkv_bias: bool = True

    def __post_init__(self) -> None:
        # YAML gives lists; normalise to tuples so the config stays hashable and comparable.
        for name in ("pyramid_levels", "ir_units", "ir_channels"):
            setattr(self, name, tuple(getattr(self, name)))
        self._check_ints()
        self._check_choices()
        self._check_widths()

    def _check_ints(self) -> None:
        for name in ("num_classes", "depth", "embed_dim", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PosterConfig.{name} must be a positive int, got {value!r}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"PosterConfig.drop_path must be in [0, 1), got {self.drop_path}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"PosterConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.proj_dim < 0:
            raise ValueError(f"PosterConfig.proj_dim must be >= 0, got {self.proj_dim}")
        if len(self.ir_units) != 3 or any(int(u) < 1 for u in self.ir_units):
            raise ValueError(f"PosterConfig.ir_units needs 3 positive ints, got {self.ir_units}")
        if len(self.ir_channels) != 3 or any(int(c) < 1 for c in self.ir_channels):
            raise ValueError(f"PosterConfig.ir_channels needs 3 positive ints, got {self.ir_channels}")

    def _check_choices(self) -> None:
        if self.image_backbone not in IMAGE_BACKBONES:
            raise ValueError(f"PosterConfig.image_backbone must be one of {IMAGE_BACKBONES}, "
                             f"got {self.image_backbone!r}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"PosterConfig.tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        levels = self.pyramid_levels
        if "l" not in levels or len(set(levels)) != len(levels) or not set(levels) <= set(LEVEL_DIVISOR):
            raise ValueError("PosterConfig.pyramid_levels must be distinct items of ('l','m','s') "
                             f"and contain 'l', got {levels}")

    def _check_widths(self) -> None:
        for level in self.pyramid_levels:
            width, rem = divmod(self.embed_dim, LEVEL_DIVISOR[level])
            if rem or width % self.num_heads:
                raise ValueError(f"pyramid level {level!r} has width embed_dim/{LEVEL_DIVISOR[level]}="
                                 f"{self.embed_dim / LEVEL_DIVISOR[level]}, which must be an int "
                                 f"divisible by num_heads={self.num_heads}")

    @property
    def levels(self) -> tuple:
        """Pyramid levels in canonical order l, m, s (config order does not matter)."""
        return tuple(level for level in ("l", "m", "s") if level in self.pyramid_levels)
