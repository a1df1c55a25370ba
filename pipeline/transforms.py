"""Decode, augment and normalise face batches.

Images travel through Ray's object store as uint8 HWC (4x smaller than float32); conversion to
normalised float NCHW happens in the training worker (``to_model_inputs``). The same decode and
normalisation serve training, evaluation, the pyfunc model and ``pipeline.predict``, so a model
sees identical pixels wherever it runs.
"""
from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pipeline.schema import CROP_SIZE, IMAGE_SIZE  # noqa: F401  (one home: the shard contract)

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# RandomErasing(value=0) acts after normalisation, i.e. it paints the mean colour.
ERASE_FILL = np.round(IMAGENET_MEAN * 255).astype(np.uint8)


def decode_image(data: bytes, size: int) -> np.ndarray:
    """JPEG/PNG bytes → RGB uint8 [size, size, 3] (bilinear resize when needed)."""
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def decode_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Parquet rows → {"image": [B,224,224,3], "crop": [B,112,112,3], "label": [B]}."""
    images = np.stack([decode_image(b, IMAGE_SIZE) for b in batch["image"]])
    crops = np.stack([decode_image(b, CROP_SIZE) for b in batch["landmark_crop"]])
    return {"image": images, "crop": crops, "label": np.asarray(batch["label"], dtype=np.int64)}


def _erase(img: np.ndarray, rng: np.random.Generator, scale: tuple[float, float]) -> None:
    """torchvision RandomErasing's box sampling (ratio 0.3–3.3), in place, mean-colour fill."""
    h, w = img.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        ratio = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
        eh, ew = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if eh < h and ew < w:
            y, x = rng.integers(0, h - eh + 1), rng.integers(0, w - ew + 1)
            img[y : y + eh, x : x + ew] = ERASE_FILL
            return


def augment_batch(batch: dict[str, np.ndarray], hflip: float, erasing: float,
                  erasing_scale: tuple[float, float], noise: float) -> dict[str, np.ndarray]:
    """The official train transforms on uint8: flip (same for face and crop), Gaussian noise
    (V1's dataset-level aug, variance 30), RandomErasing on the face."""
    rng = np.random.default_rng()
    images, crops = batch["image"].copy(), batch["crop"].copy()
    for i in range(len(images)):
        if rng.random() < hflip:
            images[i] = images[i, :, ::-1]
            crops[i] = crops[i, :, ::-1]
        if noise > 0 and rng.random() < noise:
            noisy = images[i].astype(np.float32) + rng.normal(0, np.sqrt(30.0), images[i].shape)
            images[i] = np.clip(noisy, 0, 255).astype(np.uint8)
        if rng.random() < erasing:
            _erase(images[i], rng, erasing_scale)
    return {**batch, "image": images, "crop": crops}


def to_model_inputs(image: Any, crop: Any, device: torch.device | str = "cpu",
                    bgr: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC (tensor or array) → ImageNet-normalised float NCHW on ``device``."""
    # imported here: Ray Data decode tasks import this module, and torch would add ~1 s of
    # start-up to every fresh task worker process
    import torch

    mean = torch.as_tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.as_tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def conv(x: Any) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).to(device)
        t = t.permute(0, 3, 1, 2).float().div_(255.0)
        if bgr:  # the official RAF-DB model saw BGR pixels with RGB statistics
            t = t.flip(1)
        return (t - mean) / std

    return conv(image), conv(crop)
