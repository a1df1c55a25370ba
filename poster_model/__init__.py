"""POSTER (V1) facial-expression model in plain PyTorch: config, builders, losses, SAM, weight loading."""
from .config import PosterConfig
from .model import (Poster, build_poster, count_parameters, poster_base, poster_large, poster_small,
                    poster_tiny, variant_config)

__all__ = [
    "PosterConfig", "Poster", "build_poster", "variant_config", "count_parameters",
    "poster_tiny", "poster_small", "poster_base", "poster_large",
]
