"""Anti-aliased drawing on the supersampled canvas of `pipeline.synth.generator` (OpenCV, 1/16 px)."""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.schema import IMAGE_SIZE

SS = 2  # supersampling factor for anti-aliased drawing
N = IMAGE_SIZE * SS
YY, XX = (g.astype(np.float32) / N for g in np.mgrid[0:N, 0:N])


def roi(pts: np.ndarray, pad: float) -> tuple[slice, slice]:
    lo = np.clip(np.floor((pts.min(0) - pad) * SS), 0, N).astype(int)
    hi = np.clip(np.ceil((pts.max(0) + pad) * SS), 0, N).astype(int)
    return slice(lo[1], hi[1]), slice(lo[0], hi[0])


def poly(img, pts, color, closed=True, thickness=None, off=(0.0, 0.0)):
    q = np.round((np.asarray(pts) - off) * SS * 16).astype(np.int32).reshape(-1, 1, 2)
    if thickness is None:
        cv2.fillPoly(img, [q], tuple(float(v) for v in color), cv2.LINE_AA, shift=4)
    else:
        cv2.polylines(img, [q], closed, tuple(float(v) for v in color), max(1, int(thickness * SS)),
                      cv2.LINE_AA, shift=4)


def ellipse(img, centre, axes, angle, color, thickness=-1, off=(0.0, 0.0)):
    c = tuple(int(round((v - o) * SS * 16)) for v, o in zip(centre, off))
    a = tuple(max(1, int(round(v * SS * 16))) for v in axes)
    cv2.ellipse(img, c, a, angle, 0, 360, tuple(float(v) for v in color), thickness, cv2.LINE_AA, shift=4)


def smooth(pts: np.ndarray, n: int = 8) -> np.ndarray:
    """Closed Catmull-Rom smoothing of a polygon (for lips and eyes)."""
    p1 = np.asarray(pts, dtype=np.float64)
    p0, p2, p3 = np.roll(p1, 1, 0), np.roll(p1, -1, 0), np.roll(p1, -2, 0)
    t = np.linspace(0, 1, n, endpoint=False)[None, :, None]
    out = 0.5 * ((2 * p1)[:, None] + (-p0 + p2)[:, None] * t
                 + (2 * p0 - 5 * p1 + 4 * p2 - p3)[:, None] * t**2
                 + (-p0 + 3 * p1 - 3 * p2 + p3)[:, None] * t**3)
    return out.reshape(-1, 2)
