"""Face geometry shared by the framings and the detector: the aligned-face contract (`FaceResult`),
the five-point template, the similarity fit and the warp with its border policy.

Leaf module (numpy + cv2 only): `framing` cuts named framings with it and `align` detects faces and
hands them to `framing`, so neither imports the other in a circle.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.schema import CROP_SIZE, IMAGE_SIZE as ALIGNED_SIZE  # the shard contract


# ArcFace 112x112 five-point template (image-left eye, image-right eye, nose, mouth corners),
# made left-right symmetric about x=56 so that the eye line is exactly horizontal, then shrunk
# towards the centre by `margin` so the jaw and brows fit inside the frame (ArcFace crops cut
# the chin off). Values in [0, 1] of the output side.
_ARCFACE_112 = np.array(
    [[56 - 17.6186, 51.5989], [56 + 17.6186, 51.5989], [56.0, 71.7366],
     [56 - 14.5903, 92.2848], [56 + 14.5903, 92.2848]], dtype=np.float64) / 112.0
DEFAULT_MARGIN = 0.8


def template_5pts(size: int = ALIGNED_SIZE, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """Target positions of the five reference points in a `size` x `size` aligned image."""
    return ((_ARCFACE_112 - 0.5) * margin + 0.5) * size


BORDERS = ("replicate", "reflect", "mean", "constant")
# Pixels the framing needs beyond the source image are copied from its edge (docs/ingest.md,
# "Border policy": black bands are a cue no real photo has; measured in bench/framing_cross.py).
DEFAULT_BORDER = "replicate"


class FramingError(ValueError):
    """A framing that cannot be reproduced from a raw photo, or an unknown framing name."""


class NoFaceError(ValueError):
    """No usable face: the detector found none, or the given landmarks are degenerate."""


@dataclass
class FaceResult:
    """One processed face.

    Attributes:
        image: aligned face, RGB uint8 [224, 224, 3].
        crop: landmark-net input, RGB uint8 [112, 112, 3] (the aligned face resized).
        landmarks: 68 iBUG points in the aligned image, float32 [68, 2] in [0, 1].
        landmarks_from: "detector", "known" (given by the caller) or "mean_shape" (fallback).
        border_fill: share of the frame that lay beyond the source image and was filled by the
            border policy (0 for a photo with room around the face; ~0.6 for a CK+-like 48 px
            crop re-aligned to the project framing, whose face then spans ~64 % of the side).
    """

    image: np.ndarray
    crop: np.ndarray
    landmarks: np.ndarray
    landmarks_from: str = "detector"
    border_fill: float = 0.0


def as_rgb(img: np.ndarray) -> np.ndarray:
    """Gray [H,W], [H,W,1] or RGBA [H,W,4] -> contiguous RGB uint8 [H,W,3]."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
    return np.ascontiguousarray(img)


def similarity_transform(src5: np.ndarray, dst5: np.ndarray) -> np.ndarray:
    """2x3 similarity mapping src5 onto dst5 with the src eye line made horizontal.

    The rotation is fixed by the eye line (points 0 and 1) rather than fitted, so the aligned
    eyes are exactly level; scale and translation are the least-squares fit over all 5 points.
    """
    src5 = np.asarray(src5, dtype=np.float64)
    dst5 = np.asarray(dst5, dtype=np.float64)
    if not np.all(np.isfinite(src5)):
        raise NoFaceError("non-finite landmarks")
    d = src5[1] - src5[0]
    theta = np.arctan2(d[1], d[0])
    c, s = np.cos(-theta), np.sin(-theta)
    rot = np.array([[c, -s], [s, c]])
    p = src5 @ rot.T
    pc, qc = p - p.mean(0), dst5 - dst5.mean(0)
    denom = float((pc**2).sum())
    scale = float((pc * qc).sum()) / denom if denom > 0 else 0.0
    if not np.isfinite(scale) or scale <= 1e-6 or np.hypot(*d) < 1e-3:
        raise NoFaceError("degenerate landmarks (eyes coincide or face is mirrored)")
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = dst5.mean(0) - scale * p.mean(0)
    return m


def warp_face(rgb: np.ndarray, m: np.ndarray, size: int = ALIGNED_SIZE, border: str = "replicate") -> np.ndarray:
    """Apply a 2x3 transform, pre-shrinking with INTER_AREA when it downscales a lot (no aliasing).

    `border` fills what lies outside `rgb` (``BORDERS``; docs/ingest.md).
    """
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    if scale < 0.5:
        k = min(1.0, scale * 2.0)  # leave a 2x downscale to warpAffine
        small = cv2.resize(rgb, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
        m = m.copy()
        m[:, :2] /= k
        rgb = small
    mode, value = fill(rgb, border)
    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=mode, borderValue=value)


def transform_points(pts: np.ndarray, m: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def source_fill(shape: tuple[int, ...], m: np.ndarray, size: int) -> float:
    """Share of the `size` x `size` frame that ``warp_face(rgb of shape, m)`` fills from the border
    policy: 1 minus the area of the source rectangle mapped by `m`, clipped to the frame."""
    h, w = shape[:2]
    quad = transform_points(np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64), m).astype(np.float32)
    frame = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float32)
    inside, _ = cv2.intersectConvexConvex(quad, frame)
    return float(np.clip(1.0 - max(inside, 0.0) / float(size * size), 0.0, 1.0))


def finish_face(aligned: np.ndarray, lm_px: np.ndarray, size: int, source: str,
                border_fill: float = 0.0) -> FaceResult:
    crop = cv2.resize(aligned, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA)
    lm = np.clip(np.asarray(lm_px, dtype=np.float64) / size, 0.0, 1.0).astype(np.float32)
    return FaceResult(image=aligned, crop=crop, landmarks=lm, landmarks_from=source, border_fill=border_fill)


def box_region(rgb: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
    x, y, bw, bh = (float(v) for v in box)
    h, w = rgb.shape[:2]
    x0, y0 = int(max(0, x - 0.25 * bw)), int(max(0, y - 0.25 * bh))
    x1, y1 = int(min(w, x + 1.25 * bw)), int(min(h, y + 1.25 * bh))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return rgb, np.zeros(2)
    return rgb[y0:y1, x0:x1], np.array([x0, y0], dtype=np.float64)


def fill(rgb: np.ndarray, border: str) -> tuple[int, tuple[int, ...] | int]:
    """(cv2 border mode, border value) for a policy."""
    if border == "replicate":
        return cv2.BORDER_REPLICATE, 0
    if border == "reflect":
        return cv2.BORDER_REFLECT_101, 0
    if border == "mean":
        return cv2.BORDER_CONSTANT, tuple(int(v) for v in rgb.reshape(-1, 3).mean(0).round())
    if border == "constant":
        return cv2.BORDER_CONSTANT, 0
    raise FramingError(f"unknown border policy {border!r}; choose from {BORDERS}")
