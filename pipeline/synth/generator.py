"""Synthetic facial-expression data: procedurally drawn faces with known 68-point landmarks.

Each class moves the same few facial "action" parameters (mouth curvature / opening / width,
upper-lip raise, one-sided smile, brow height and tilt, eye openness) by a random intensity,
on top of random identity geometry, so the class lives in the landmark geometry and the shapes
drawn from it. Everything else is nuisance: pose (roll, yaw, scale, position), skin tone, hair,
clothing, lighting, background, blur and sensor noise. The result is learnable (a classifier
on aligned landmark geometry does well) but a linear probe on raw pixels does poorly.

Deterministic: sample `i` of class `c` with seed `s` is the same image on every machine.

    python -m pipeline.synth --out RAWDIR --per-class 40         # <split>/<label>/*.jpg tree
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.faces.align import MEAN_SHAPE_68
from pipeline.schema import CANONICAL_CLASSES, IMAGE_SIZE
from pipeline.synth.draw import N as _N, SS as _SS, XX as _XX, YY as _YY  # noqa: F401
from pipeline.synth.draw import ellipse as _ellipse, poly as _poly, roi as _roi, smooth as _smooth

SIZE = IMAGE_SIZE

# Action parameters, in units of the inter-ocular distance where they move points:
#   smile (+ corners up / - down), open (jaw drop), width (corners out/in), lip (upper-lip raise),
#   asym (one-sided corner raise), brow (raise/lower), tilt (+ inner brow ends up / - down),
#   eyes (+ wide / - squint).
ACTIONS = ("smile", "open", "width", "lip", "asym", "brow", "tilt", "eyes")
PROTOTYPES: dict[str, dict[str, float]] = {
    "neutral": {},
    "happy": {"smile": 1.0, "open": 0.25, "width": 0.6, "eyes": -0.35, "brow": 0.1},
    "sad": {"smile": -0.8, "tilt": 1.0, "brow": -0.1, "eyes": -0.35},
    "surprise": {"open": 0.95, "width": -0.5, "brow": 1.0, "eyes": 1.0},
    "fear": {"open": 0.45, "width": 0.7, "brow": 0.6, "tilt": 0.8, "eyes": 0.8, "smile": -0.3},
    "disgust": {"lip": 1.0, "smile": -0.45, "brow": -0.45, "tilt": -0.3, "eyes": -0.55, "open": 0.1},
    "anger": {"brow": -0.85, "tilt": -1.0, "eyes": 0.1, "width": -0.35, "smile": -0.25},
    "contempt": {"asym": 1.0, "smile": 0.1, "eyes": -0.15},
}


def _symmetric_mean_shape() -> np.ndarray:
    from pipeline.faces.align import IBUG68_FLIP

    m = MEAN_SHAPE_68.astype(np.float64) * SIZE
    mirrored = m[IBUG68_FLIP].copy()
    mirrored[:, 0] = SIZE - mirrored[:, 0]
    return (m + mirrored) / 2


BASE_SHAPE = _symmetric_mean_shape()  # canonical neutral face, pixels of a 224 frame


@dataclass
class SynthFace:
    image: np.ndarray      # RGB uint8 [224, 224, 3]
    landmarks: np.ndarray  # float32 [68, 2], pixels of `image`
    label: str
    params: dict


def sample_rng(seed: int, label_index: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(label_index), int(index)])


def expression(label: str, rng: np.random.Generator, intensity: tuple[float, float] = (0.35, 1.15),
               noise: float = 0.15) -> dict[str, float]:
    """Random-intensity version of a class prototype plus small action noise (bench/lab_set.py
    draws posed peaks with a narrower ``intensity`` and less ``noise``)."""
    k = rng.uniform(*intensity)
    proto = PROTOTYPES[label]
    act = {a: k * proto.get(a, 0.0) + rng.normal(0.0, noise) for a in ACTIONS}
    act["open"] = max(0.0, act["open"])
    act["lip"] = max(0.0, act["lip"])
    if label != "contempt":
        act["asym"] *= 0.5
    act["asym_side"] = float(rng.choice([-1.0, 1.0]))
    return act


def deform(act: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """Canonical landmarks for one identity and expression (pixels of a 224 frame)."""
    p = BASE_SHAPE.copy()
    cx = SIZE / 2
    d = p[42:48].mean(0)[0] - p[36:42].mean(0)[0]  # inter-ocular distance
    up = np.array([0.0, -1.0])
    # identity: face proportions, eye spacing, nose length, mouth width, brow height
    p[:, 0] = cx + (p[:, 0] - cx) * rng.uniform(0.9, 1.1)
    p[:, 1] = 112 + (p[:, 1] - 112) * rng.uniform(0.92, 1.08)
    for eye in (slice(36, 42), slice(42, 48)):
        c = p[eye].mean(0)
        p[eye] = c + (p[eye] - c) * rng.uniform(0.85, 1.2)
    p[31:36] += up * d * rng.normal(0, 0.05)
    mouth = slice(48, 68)
    mc = p[mouth].mean(0)
    p[mouth, 0] = mc[0] + (p[mouth, 0] - mc[0]) * rng.uniform(0.88, 1.12)
    p[17:27] += up * d * rng.normal(0, 0.04)

    # expression
    left_c, right_c = [48, 60], [54, 64]
    s, o, w = act["smile"], act["open"], act["width"]
    for idx, side in ((left_c, -1), (right_c, 1)):
        p[idx] += up * d * 0.13 * s
        p[idx, 0] += side * d * (0.08 * w + 0.04 * max(s, 0))
    p[[49, 53, 59, 55]] += up * d * 0.05 * s  # neighbours follow the corners a little
    side = act["asym_side"]
    p[left_c if side < 0 else right_c] += up * d * 0.15 * act["asym"]
    p[[49, 50, 51, 52, 53, 61, 62, 63]] += up * d * 0.09 * act["lip"]
    p[31:36] += up * d * 0.04 * act["lip"]
    lower = [55, 56, 57, 58, 59, 65, 66, 67]
    p[lower] -= up * d * 0.45 * o
    p[[60, 64]] -= up * d * 0.15 * o
    p[3:14] -= up * d * 0.30 * o * np.array([0.2, 0.4, 0.6, 0.8, 0.95, 1, 0.95, 0.8, 0.6, 0.4, 0.2])[:, None]
    p[17:27] += up * d * 0.16 * act["brow"]
    inner = [20, 21, 22, 23]
    p[inner] += up * d * 0.10 * act["tilt"] * np.array([0.5, 1, 1, 0.5])[:, None]
    e = act["eyes"]
    p[[37, 38, 43, 44]] += up * d * 0.07 * e
    p[[40, 41, 46, 47]] -= up * d * 0.025 * e
    # keep the lids from crossing
    for top, bot in ((37, 41), (38, 40), (43, 47), (44, 46)):
        if p[top, 1] > p[bot, 1] - 1.5:
            p[top, 1] = p[bot, 1] - 1.5
    for top, bot in ((61, 67), (62, 66), (63, 65)):
        if p[top, 1] > p[bot, 1]:
            mid = (p[top, 1] + p[bot, 1]) / 2
            p[top, 1] = p[bot, 1] = mid
    return p


def _pose(p: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Yaw (features shift sideways inside the outline), then roll/scale/shift about the centre."""
    yaw = rng.uniform(-0.22, 0.22)
    cx, cy = p[27:31, 0].mean(), p[:, 1].mean()
    half = (p[16, 0] - p[0, 0]) / 2
    rel = (p[:, 0] - cx) / half
    p = p.copy()
    p[:, 0] += yaw * half * 0.35 * (1 - rel**2)  # central points move most, outline least
    p[:, 0] -= yaw * half * 0.12 * rel           # far side narrows
    ang = np.deg2rad(rng.uniform(-18, 18))
    sc = rng.uniform(0.72, 1.05)
    t = rng.uniform(-12, 12, size=2)
    c, s = np.cos(ang), np.sin(ang)
    r = np.array([[c, -s], [s, c]]) * sc
    out = (p - [SIZE / 2, cy]) @ r.T + [SIZE / 2, cy] + t
    return out, {"roll_deg": float(np.rad2deg(ang)), "scale": float(sc), "yaw": float(yaw)}


def _skin(rng) -> np.ndarray:
    hue = rng.uniform(8, 22)  # OpenCV hue (0-180)
    sat = rng.uniform(0.25, 0.6) * 255
    val = rng.uniform(0.35, 0.97) * 255
    hsv = np.uint8([[[hue, sat, val]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64)


def _background(rng) -> np.ndarray:
    kind = rng.integers(4)
    c1, c2 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    if kind == 0:
        return np.broadcast_to(c1, (_N, _N, 3)).copy()
    if kind == 2:
        small = rng.uniform(0, 255, (6, 6, 3)).astype(np.float32)
        return cv2.resize(small, (_N, _N), interpolation=cv2.INTER_CUBIC)
    a = rng.uniform(0, 2 * np.pi)
    g = np.cos(a) * _XX[::_SS, ::_SS] + np.sin(a) * _YY[::_SS, ::_SS]  # computed at 224, then upsized
    if kind == 1:
        g = (g - g.min()) / (np.ptp(g) + 1e-6)
    else:
        g = (np.sin(g / rng.uniform(0.05, 0.3) * 2 * np.pi) > 0).astype(np.float32)
    return cv2.resize(c1 + (c2 - c1) * g[..., None], (_N, _N), interpolation=cv2.INTER_LINEAR)


def _forehead(p: np.ndarray) -> np.ndarray:
    """Arc over the forehead from jaw point 17 back to jaw point 1."""
    a, b = p[16], p[0]
    mid = (a + b) / 2
    across = a - b
    half = np.hypot(*across) / 2
    u = across / (2 * half)
    nrm = np.array([u[1], -u[0]])  # points up the face
    height = half * 1.05
    ts = np.linspace(0, np.pi, 16)
    return np.array([mid + u * half * np.cos(t) + nrm * height * np.sin(t) for t in ts])


def render(p: np.ndarray, act: dict, rng: np.random.Generator) -> np.ndarray:
    """Draw the face with landmarks `p` (pixels of the 224 frame); returns RGB uint8.

    The phases run in a fixed order: their random draws, in this order, make a seed's image."""
    img = _background(rng)
    skin = _skin(rng)
    hair = rng.uniform(10, 90) * np.array([1.0, rng.uniform(0.7, 0.95), rng.uniform(0.5, 0.85)])
    if rng.random() < 0.15:
        hair = rng.uniform(120, 220) * np.array([1.0, 0.9, 0.6])  # light hair
    f = _Frame.of(p)
    _head_and_shoulders(img, f, skin, hair, rng)
    _face_and_nose(img, f, skin)
    _eyes(img, f, skin, rng)
    _brows_and_mouth(img, f, skin, hair, act, rng)
    _fringe(img, f, hair, rng)
    return _optics(img, rng)


@dataclass
class _Frame:
    """Landmarks plus the directions and scale every phase of `render` draws with."""
    p: np.ndarray
    d: float              # eye distance
    face_up: np.ndarray   # unit vector chin -> nose bridge
    side: np.ndarray      # unit vector across the face
    fh: np.ndarray        # forehead outline
    outline: np.ndarray   # jaw + forehead

    @classmethod
    def of(cls, p: np.ndarray) -> "_Frame":
        d = np.hypot(*(p[42:48].mean(0) - p[36:42].mean(0)))
        face_up = p[27] - p[8]
        face_up /= np.hypot(*face_up)
        fh = _forehead(p)
        return cls(p, d, face_up, np.array([-face_up[1], face_up[0]]), fh, np.vstack([p[0:17], fh]))


def _head_and_shoulders(img: np.ndarray, f: _Frame, skin: np.ndarray, hair: np.ndarray,
                        rng: np.random.Generator) -> None:
    p, d, face_up, fh, side = f.p, f.d, f.face_up, f.fh, f.side
    if rng.random() < 0.5:  # long hair behind the head
        _poly(img, np.vstack([fh * 1.0 + (fh - fh.mean(0)) * 0.25, p[[16, 12, 4, 0]] - face_up * d * 0.6
                              + np.array([[d * 0.4, 0], [d * 0.6, 0], [-d * 0.6, 0], [-d * 0.4, 0]])]), hair)
    # neck and shoulders
    clothes = rng.uniform(0, 255, 3)
    neck = np.array([p[5], p[11], p[11] - face_up * d * 1.2, p[5] - face_up * d * 1.2])
    _poly(img, neck, skin * 0.85)
    sh = p[8] - face_up * d * 1.1
    _poly(img, [sh + side * d * 2.2, sh - side * d * 2.2, sh - side * d * 2.6 - face_up * d * 3,
                sh + side * d * 2.6 - face_up * d * 3], clothes)
    # ears
    for j in (1, 15):
        _ellipse(img, p[j] + (p[j] - p[27]) * 0.05, (d * 0.18, d * 0.32),
                 np.degrees(np.arctan2(face_up[1], face_up[0])) + 90, skin * 0.9)


def _face_and_nose(img: np.ndarray, f: _Frame, skin: np.ndarray) -> None:
    p, d, face_up, outline = f.p, f.d, f.face_up, f.outline
    n = SIZE * _SS
    # face with radial shading
    _poly(img, outline, skin)
    mask = np.zeros((n, n), np.float32)
    _poly(mask, outline, (1.0,))
    ys, xs = _roi(outline, 2)
    centre = outline.mean(0) / SIZE  # the grids are in [0, 1) of the frame
    r = np.hypot(_XX[ys, xs] - centre[0], _YY[ys, xs] - centre[1]) * (SIZE / (d * 1.6))
    shade = 1.0 - 0.28 * mask[ys, xs] * np.clip(r, 0, 1.3) ** 2
    img[ys, xs] *= shade[..., None]
    # nose: bridge shadow, tip highlight, nostrils
    _poly(img, p[27:31], skin * 0.78, closed=False, thickness=d * 0.07)
    _poly(img, np.vstack([p[31:36], p[30]]), skin * 0.85)
    _ellipse(img, p[30], (d * 0.12, d * 0.1), 0, np.minimum(skin * 1.08, 255))
    for j in (32, 34):
        _ellipse(img, p[j] + face_up * d * 0.01, (d * 0.06, d * 0.035), 0, skin * 0.35)


def _eyes(img: np.ndarray, f: _Frame, skin: np.ndarray, rng: np.random.Generator) -> None:
    """Sclera, iris, pupil, lids, lashes."""
    p, d = f.p, f.d
    iris_col = rng.choice([[70, 45, 25], [40, 25, 15], [60, 90, 140], [70, 100, 60], [110, 80, 40]])
    for sl in (slice(36, 42), slice(42, 48)):
        eye = _smooth(p[sl], 6)
        _ellipse(img, p[sl].mean(0), (d * 0.32, d * 0.2), 0, skin * 0.8)  # socket shadow
        _poly(img, eye, (235, 232, 225))
        # iris and pupil drawn on a copy of the eye's bounding box, then masked by the lids
        ys, xs = _roi(eye, 2)
        off = (xs.start / _SS, ys.start / _SS)
        layer = img[ys, xs].copy()
        emask = np.zeros(layer.shape[:2], np.float32)
        _poly(emask, eye, (1.0,), off=off)
        c = p[sl].mean(0) + np.array([rng.normal(0, d * 0.03), 0])
        rad = d * 0.13
        _ellipse(layer, c, (rad, rad), 0, iris_col, off=off)
        _ellipse(layer, c, (rad * 0.45, rad * 0.45), 0, (8, 8, 8), off=off)
        _ellipse(layer, c - [rad * 0.3, rad * 0.3], (rad * 0.15, rad * 0.15), 0, (250, 250, 250), off=off)
        m3 = emask[..., None]
        img[ys, xs] = img[ys, xs] * (1 - m3) + layer * m3
        upper = p[[sl.start, sl.start + 1, sl.start + 2, sl.start + 3]]
        _poly(img, _smooth(upper, 4)[:-3], (25, 20, 20), closed=False, thickness=d * 0.05)
        _poly(img, p[[sl.start + 3, sl.start + 4, sl.start + 5, sl.start]], skin * 0.6, closed=False,
              thickness=d * 0.02)


def _brows_and_mouth(img: np.ndarray, f: _Frame, skin: np.ndarray, hair: np.ndarray, act: dict,
                     rng: np.random.Generator) -> None:
    p, d, face_up, side = f.p, f.d, f.face_up, f.side
    bw = d * rng.uniform(0.07, 0.12)
    for sl in (slice(17, 22), slice(22, 27)):
        _poly(img, p[sl], hair * 0.9, closed=False, thickness=bw)
    lip = skin * np.array([1.0, 0.62, 0.62]) * rng.uniform(0.75, 0.95)
    _poly(img, _smooth(p[48:60], 6), lip)
    inner = _smooth(p[60:68], 6)
    gap = np.hypot(*(p[66] - p[62]))
    if gap > d * 0.04:
        _poly(img, inner, (60, 20, 25))
        if gap > d * 0.12:
            teeth = p[[60, 61, 62, 63, 64]].copy()
            lower_t = teeth + (p[66] - p[62]) * 0.35
            _poly(img, np.vstack([teeth, lower_t[::-1]]), (235, 230, 215))
    _poly(img, inner, lip * 0.55, thickness=d * 0.025)
    if act.get("lip", 0) > 0.4:  # nose wrinkles for disgust-like faces
        for j, sgn in ((31, -1), (35, 1)):
            _poly(img, [p[j] + face_up * d * 0.25, p[j] + side * sgn * d * 0.1 + face_up * d * 0.05],
                  skin * 0.7, closed=False, thickness=d * 0.02)


def _fringe(img: np.ndarray, f: _Frame, hair: np.ndarray, rng: np.random.Generator) -> None:
    """Fringe over the forehead (never below the brows)."""
    style = rng.integers(3)
    if style > 0:
        top = f.fh[3:-3]
        drop = f.d * (0.25 if style == 1 else 0.5)
        _poly(img, np.vstack([top + f.face_up * f.d * 0.35, (top - f.face_up * drop)[::-1]]), hair)


def _optics(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Global light direction and exposure, then optics and sensor noise, at the output size."""
    img = cv2.resize(img, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    a = rng.uniform(0, 2 * np.pi)
    g = np.cos(a) * (_XX[::_SS, ::_SS] - 0.5) + np.sin(a) * (_YY[::_SS, ::_SS] - 0.5)
    img *= ((1 + rng.uniform(0.0, 0.5) * g) * rng.uniform(0.75, 1.2))[..., None]
    blur = rng.uniform(0, 1.2)
    if blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(0, 8))
    return np.clip(img, 0, 255).astype(np.uint8)


def generate(label: str, index: int, seed: int = 0) -> SynthFace:
    """One face of class `label` (a canonical name); deterministic in (seed, label, index)."""
    li = CANONICAL_CLASSES.index(label)
    rng = sample_rng(seed, li, index)
    act = expression(label, rng)
    shape = deform(act, rng)
    pts, pose = _pose(shape, rng)
    img = render(pts, act, rng)
    return SynthFace(img, pts.astype(np.float32), label, {**act, **pose})


def plan(per_class: int, classes: int | list[str] = 7, test_fraction: float = 0.2
         ) -> list[tuple[str, str, int]]:
    """(split, label, index) for a synthetic set: the first `test` indices of each class are test."""
    names = list(CANONICAL_CLASSES[:classes]) if isinstance(classes, int) else list(classes)
    n_test = int(round(per_class * test_fraction))
    return [("test" if i < n_test else "train", name, i) for name in names for i in range(per_class)]


def write_tree(out: str | Path, per_class: int, seed: int = 0, classes: int = 7,
               test_fraction: float = 0.2, quality: int = 95) -> int:
    """Write `<out>/<split>/<label>/<label>_<i>.jpg`; returns the number of images."""
    out = Path(out)
    items = plan(per_class, classes, test_fraction)
    for split, label, i in items:
        face = generate(label, i, seed)
        d = out / split / label
        d.mkdir(parents=True, exist_ok=True)
        bgr = cv2.cvtColor(face.image, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(d / f"{label}_{i:05d}.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return len(items)
