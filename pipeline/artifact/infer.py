"""uint8 faces → logits: the one forward used by training evaluation, ``pipeline.evaluate``, the
registry review, ``pipeline.predict`` and the served pyfunc; and the pyfunc's request decoding
(a cell of encoded bytes, base64 text or pixels → an RGB uint8 face)."""
from __future__ import annotations

import base64
import binascii
import io
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline.transforms import decode_image, to_model_inputs

if TYPE_CHECKING:
    import pandas as pd


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


def cell_to_uint8(x: Any, size: int) -> np.ndarray:
    """One request cell → RGB uint8 [size, size, 3] (``size=0``: encoded bytes at native size)."""
    from PIL import Image

    if isinstance(x, str):  # base64 text, e.g. from a JSON request that skipped schema decoding
        try:
            x = base64.b64decode(x, validate=False)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"image string is not base64: {e}") from None
    if isinstance(x, (bytes, bytearray, memoryview)):
        if not size:  # a raw photo: native size
            with Image.open(io.BytesIO(bytes(x))) as im:
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
        return decode_image(bytes(x), size)
    arr = np.asarray(x)
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError("pixel arrays must be uint8 (0..255)")
        arr = arr.astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxWx3 uint8 image, got shape {arr.shape}")
    if arr.shape[2] != 3:
        arr = np.asarray(Image.fromarray(arr.squeeze(-1) if arr.shape[2] == 1 else arr).convert("RGB"))
    if size and arr.shape[:2] != (size, size):
        arr = np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))
    return np.ascontiguousarray(arr)


def cells_to_uint8(items: Any, size: int) -> np.ndarray:
    return np.stack([cell_to_uint8(x, size) for x in items])


def faces_from_photos(cells: Any, extra: dict[str, Any], processor: Any) -> tuple[np.ndarray, np.ndarray]:
    """Raw photo cells → (aligned images, crops) in the model's framing (``params.detect``)."""
    from pipeline.faces.align import NoFaceError
    from pipeline.faces.framing import of_extra, prepare_face, resolve_for_predict

    framing = resolve_for_predict(of_extra(extra))
    faces = []
    for i, x in enumerate(cells):
        rgb = cell_to_uint8(x, 0)
        try:
            faces.append(prepare_face(rgb, framing, processor))
        except NoFaceError as e:
            raise ValueError(f"row {i}: no face found ({e}); send a photo with one visible face") from None
    return np.stack([f.image for f in faces]), np.stack([f.crop for f in faces])


def images_frame(images: Any, crops: Any | None = None) -> pd.DataFrame:
    """A pyfunc input DataFrame from a list/array of images (bytes or HWC uint8) and crops."""
    import pandas as pd  # not at module level: training imports predict_logits from here

    data = {"image": list(images)}
    if crops is not None:
        data["landmark_crop"] = list(crops)
    return pd.DataFrame(data)
