"""uint8 faces → logits: the one forward used by training evaluation, ``pipeline.evaluate``, the
registry review, ``pipeline.predict`` and the served pyfunc."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.transforms import to_model_inputs


@torch.no_grad()
def predict_logits(model: torch.nn.Module, image_u8: np.ndarray, crop_u8: np.ndarray | None,
                   device: torch.device | str = "cpu", bgr: bool = False,
                   use_crop: bool = True, autocast: bool = False) -> torch.Tensor:
    """uint8 NHWC faces (and crops) → logits on CPU, float32."""
    if crop_u8 is None:
        crop_u8 = image_u8  # resized inside the model when use_crop is False
    image, crop = to_model_inputs(image_u8, crop_u8, device, bgr=bgr)
    dev_type = torch.device(device).type
    with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=autocast and dev_type == "cuda"):
        logits, _ = model(image, crop if use_crop else None)
    return logits.float().cpu()
