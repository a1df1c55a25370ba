"""`PosterConfig`: every knob of the POSTER (V1) model as plain, YAML-settable fields."""
from __future__ import annotations

from dataclasses import dataclass

IMAGE_BACKBONES = ("ir50", "resnet18", "resnet50", "efficientnet_b0")
TOKENIZERS = ("raw", "patch")
ARCHS = ("v1", "v2")
LEVEL_DIVISOR = {"l": 1, "m": 2, "s": 4}  # embedding width of each pyramid level = embed_dim // divisor


@dataclass
class PosterConfig:
    """POSTER hyper-parameters. The defaults are the official V1 `large` model.

    Fields are plain str/int/float/bool/tuple so a YAML config tree can set each of them.
    `arch="v2"` selects POSTER V2 (POSTER++); there `depth`/`embed_dim`/`num_heads`/`mlp_ratio` are
    those of its ViT (official 2 / 768 / 8 / 4), `ir_channels` are the widths of the three window
    cross-attention scales, `window_heads` their head counts, and `drop_path` is the end of
    `linspace(0, drop_path, 5)` whose first three values are the per-scale FFN drop-path rates
    (official 0.5 -> 0 / 0.125 / 0.25). V1-only fields (pyramid_levels, tokenizer, image_backbone,
    input_size) are ignored by V2, which always runs at 112.
    """

    arch: str = "v1"  # "v1" = POSTER, "v2" = POSTER V2 / POSTER++
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
    window_heads: tuple = (2, 4, 8)  # V2: heads per cross-attention scale (head dim 32 officially)
    # V2: also build the official modules that never run (IR-50 output_layer, ViT patch_embed, CON1,
    # IRLinear1/2, eca_block, blocks.*.conv; 14,466,637 parameters) for parameter-count parity
    official_dead_modules: bool = False
    # V1 only: side S of the square input both nets see (the model resizes to it). 112 is the official
    # model (7x7 = 49 tokens per stream); S/16 tokens a side otherwise. A smaller S is the CPU lever:
    # 64 costs about a quarter of 112's step time, and small sources (48x48 FER crops) lose nothing by it.
    input_size: int = 112

    def __post_init__(self) -> None:
        # YAML gives lists; normalise to tuples so the config stays hashable and comparable.
        for name in ("pyramid_levels", "ir_units", "ir_channels", "window_heads"):
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
        if not isinstance(self.input_size, int) or self.input_size < 32 or self.input_size % 16:
            raise ValueError(f"PosterConfig.input_size must be a multiple of 16 and >= 32 (112 official), "
                             f"got {self.input_size!r}")

    def _check_choices(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"PosterConfig.arch must be one of {ARCHS}, got {self.arch!r}")
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
        if self.arch == "v2":
            self._check_v2_widths()
            return
        for level in self.pyramid_levels:
            width, rem = divmod(self.embed_dim, LEVEL_DIVISOR[level])
            if rem or width % self.num_heads:
                raise ValueError(f"pyramid level {level!r} has width embed_dim/{LEVEL_DIVISOR[level]}="
                                 f"{self.embed_dim / LEVEL_DIVISOR[level]}, which must be an int "
                                 f"divisible by num_heads={self.num_heads}")

    def _check_v2_widths(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"PosterConfig.embed_dim={self.embed_dim} must be divisible by num_heads={self.num_heads}")
        if len(self.window_heads) != 3 or any(int(c) % int(h) for c, h in zip(self.ir_channels, self.window_heads)):
            raise ValueError(f"PosterConfig.window_heads needs 3 head counts dividing ir_channels={self.ir_channels}, "
                             f"got {self.window_heads}")
        if self.official_dead_modules and self.ir_channels != (64, 128, 256):
            raise ValueError("PosterConfig.official_dead_modules needs the official widths ir_channels=(64,128,256)")

    @classmethod
    def fields_from(cls, values: dict, strict: bool = False) -> dict:
        """JSON/YAML values as field values (lists back to tuples). Unknown keys are dropped, or
        refused with their names when `strict` (a user's overrides, not a saved config)."""
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - names)
        if strict and unknown:
            raise ValueError(f"unknown PosterConfig field(s) {unknown}; valid: {sorted(names)}")
        return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}

    @classmethod
    def from_dict(cls, values: dict) -> "PosterConfig":
        """The config saved with a model (``dataclasses.asdict``, through JSON)."""
        return cls(**cls.fields_from(values))

    @property
    def tokens_per_stream(self) -> int:
        """Image (and landmark) tokens without the cls token: 49 at the official 112 input."""
        return (self.input_size // 16) ** 2

    @property
    def levels(self) -> tuple:
        """Pyramid levels in canonical order l, m, s (config order does not matter)."""
        return tuple(level for level in ("l", "m", "s") if level in self.pyramid_levels)
