"""68-point iBUG geometry: the mirror permutation, regions, augmentation that moves points with
pixels, and the NME metric. Numpy only (Ray Data / worker threads import it without torch).

Points are in the shard's frame: x, y normalised to [0, 1] of the aligned face, which is also the
frame of the 112x112 landmark crop (the crop is that face resized), so they are the landmark
net's targets as stored.
"""
from __future__ import annotations

import numpy as np

from pipeline.faces.align import IBUG68_FLIP
from pipeline.transforms import _warp

N_POINTS = 68
# iBUG 68: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67
REGIONS: dict[str, tuple[int, int]] = {
    "jaw": (0, 17), "brows": (17, 27), "nose": (27, 36), "eyes": (36, 48), "mouth": (48, 68)}
OUTER_EYE_CORNERS = (36, 45)  # the NME normaliser (inter-ocular distance, 300-W convention)


# the project's one mirror table (pipeline.faces.align; the generator's symmetric face uses it too)
FLIP_PERM = IBUG68_FLIP


def flip_points(pts: np.ndarray) -> np.ndarray:
    """[..., 68, 2] points of a face -> the points of its mirror image (x -> 1 - x, roles swapped)."""
    out = pts[..., FLIP_PERM, :].copy()
    out[..., 0] = 1.0 - out[..., 0]
    return out


def warp_points(pts: np.ndarray, box: tuple[float, float, float], angle: float) -> np.ndarray:
    """Where ``pipeline.transforms._warp(img, box, angle)`` moves points [68, 2] (inverse of its map)."""
    x0, y0, side = box
    t = np.deg2rad(angle)
    d = pts - np.array([x0 + side / 2, y0 + side / 2], np.float32)
    u = (np.cos(t) * d[:, 0] + np.sin(t) * d[:, 1]) / side
    v = (-np.sin(t) * d[:, 0] + np.cos(t) * d[:, 1]) / side
    return np.stack([u + 0.5, v + 0.5], axis=1).astype(np.float32)


def augment(crops: np.ndarray, points: np.ndarray, rng: np.random.Generator, hflip: float = 0.5,
            area_min: float = 0.8, shift: float = 0.05, rotation: float = 15.0) -> tuple[np.ndarray, np.ndarray]:
    """Random square crop (area >= ``area_min``), shift (up to ``shift`` of the side beyond the
    frame), rotation (within +-``rotation`` degrees) and mirror, each moving the points with the
    pixels. crops uint8 [B,112,112,3], points [B,68,2] -> new arrays."""
    crops, points = crops.copy(), points.copy()
    for i in range(len(crops)):
        side = float(np.sqrt(rng.uniform(area_min, 1.0)))
        lo, hi = -shift, 1 - side + shift
        box = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), side)
        angle = float(rng.uniform(-rotation, rotation)) if rotation > 0 else 0.0
        if side < 1.0 or angle or shift > 0:
            crops[i] = _warp(crops[i], box, angle)
            points[i] = warp_points(points[i], box, angle)
        if rng.random() < hflip:
            crops[i] = crops[i, :, ::-1]
            points[i] = flip_points(points[i])
    return crops, points


def point_errors(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-face, per-point error over the inter-ocular distance: [B,68] (pred/true [B,68,2])."""
    a, b = OUTER_EYE_CORNERS
    iod = np.linalg.norm(true[:, a] - true[:, b], axis=1)
    return np.linalg.norm(pred - true, axis=2) / np.maximum(iod, 1e-6)[:, None]


def error_sums(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """[faces, sum NME overall, sum per region...] of a batch: sums, so ranks can all-reduce them."""
    e = point_errors(pred, true)
    per_region = [e[:, s:t].mean(axis=1).sum() for s, t in REGIONS.values()]
    return np.array([len(e), e.mean(axis=1).sum(), *per_region], np.float64)


def nme_of_sums(sums: np.ndarray) -> dict[str, float]:
    """``error_sums`` (summed over batches and ranks) -> {"nme": .., "nme_jaw": .., ...}."""
    n = max(float(sums[0]), 1.0)
    out = {"nme": float(sums[1]) / n}
    out.update({f"nme_{r}": float(s) / n for r, s in zip(REGIONS, sums[2:])})
    return out


def usable(points: np.ndarray) -> np.ndarray:
    """Rows whose stored points can be a target: finite, not all zero (no detector ran), eyes apart."""
    a, b = OUTER_EYE_CORNERS
    finite = np.isfinite(points).all(axis=(1, 2))
    iod = np.linalg.norm(points[:, a] - points[:, b], axis=1)
    return finite & (np.abs(points).sum(axis=(1, 2)) > 0) & (iod > 0.05)
