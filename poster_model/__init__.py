"""POSTER (V1) and POSTER V2 facial-expression models in plain PyTorch: config, builders, losses,
SAM, weight loading.

    from poster_model import PosterConfig, build_poster, poster_large, poster_v2
    model = build_poster(PosterConfig(num_classes=7))   # or poster_v2(7)
    logits, features = model(image, landmark_crop=None)
"""
from .config import PosterConfig
from .losses import LossMixture, circle_loss, supcon_loss
from .model import (V1_VARIANTS, V2_VARIANTS, Poster, build_poster, count_parameters, poster_base, poster_large,
                    poster_small, poster_tiny, poster_v2, poster_v2_tiny, variant_config)
from .model_v2 import LogitsOnly, PosterV2
from .sam import SAM
from .weights import (WeightLoadError, load_image_backbone, load_official_checkpoint, load_pretrained,
                      read_state_dict)

__all__ = [
    "PosterConfig", "Poster", "build_poster", "variant_config", "count_parameters",
    "poster_tiny", "poster_small", "poster_base", "poster_large", "poster_v2", "poster_v2_tiny",
    "PosterV2", "LogitsOnly", "V1_VARIANTS", "V2_VARIANTS",
    "LossMixture", "supcon_loss", "circle_loss", "SAM",
    "load_pretrained", "load_official_checkpoint", "load_image_backbone", "read_state_dict",
    "WeightLoadError",
]
