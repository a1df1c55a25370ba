"""A CK+48-like lab set from the generator: the accuracy target's proxy (bench/learning.py ``lab48``).

    python bench/lab_set.py --out runs/bench_learning/lab48_raw [--persons 118] [--seed 0]

The issue's held-out check is a small lab set (CK+48: 7 classes, ~120 people, 327 posed sequences,
the last 3 frames of each as 48x48 grayscale face crops, split by person) where a 4-layer CNN
reaches ~0.95. Nothing like it is on this machine, so this draws one with ``pipeline.synth``'s
face model, keeping what makes a lab set a lab set:

- each person has one identity (face geometry, skin, hair, light) across all their sequences;
- a sequence is one posed expression; its 3 frames are near its peak (intensity x 0.9/0.95/1.0),
  so a person's frames are near-duplicates and only a split by person is honest;
- faces are frontal and tightly cropped (roll within +-3 deg), 48x48 gray;
- CK+'s sequence counts per class (anger 45, contempt 18, disgust 59, fear 25, happy 69,
  sadness 28, surprise 83), written as a class-sorted ``<label>/S<person>_<seq>_<frame>.png`` tree.

It is a proxy, calibrated only in that the bench's CNN should score near the issue's 0.946 on it:
a gap between POSTER and the CNN here says more than either number alone.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.synth.generator import SIZE, deform, expression, render  # noqa: E402

CK_SEQUENCES = {"anger": 45, "contempt": 18, "disgust": 59, "fear": 25, "happy": 69, "sadness": 28,
                "surprise": 83}
CANONICAL = {"sadness": "sad"}  # the generator's name of CK+'s folder
PERSON_REGEX = r"(S[0-9]+)_[0-9]+_[0-9]+[.]png$"
FRAMES = (0.9, 0.95, 1.0)


def sequence_actions(label: str, rng: np.random.Generator) -> dict[str, float]:
    """A posed peak: the prototype at a strong intensity, plus this person's way of posing it."""
    return expression(CANONICAL.get(label, label), rng, intensity=(0.75, 1.15), noise=0.12)


def frame(person_seed: list[int], act: dict[str, float], scale: float, roll_deg: float,
          noise: np.random.Generator, size: int = 48) -> np.ndarray:
    """One gray ``size`` face crop of a person (identity and rendering fixed by ``person_seed``)."""
    a = {k: (v * scale if k != "asym_side" else v) for k, v in act.items()}  # scale > 0: open, lip stay >= 0
    p = deform(a, np.random.default_rng(person_seed))  # identity: the same draws for every frame
    c, s = np.cos(np.deg2rad(roll_deg)), np.sin(np.deg2rad(roll_deg))
    centre = p.mean(0)
    p = (p - centre) @ np.array([[c, -s], [s, c]]).T + centre
    rgb = render(p, a, np.random.default_rng(person_seed + [1]))  # skin, hair, light: per person
    lo, hi = p.min(0), p.max(0)
    half = (hi - lo).max() / 2 * 1.08
    cx, cy = (lo + hi) / 2 - [0, half * 0.08]  # a little forehead, as a face detector's box
    box = np.clip(np.round([cx - half, cy - half, cx + half, cy + half]), 0, SIZE).astype(int)
    gray = cv2.cvtColor(rgb[box[1]:box[3], box[0]:box[2]], cv2.COLOR_RGB2GRAY).astype(np.float32)
    gray = cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA)
    gray += noise.normal(0, 2.0, gray.shape).astype(np.float32)  # sensor noise differs per frame
    return np.clip(gray, 0, 255).astype(np.uint8)


def write_lab_set(out: Path, persons: int = 118, seed: int = 0) -> int:
    """Write the tree; each sequence goes to a random person, so people have 1-5 sequences."""
    rng = np.random.default_rng([seed, 48])
    labels = [lab for lab, n in CK_SEQUENCES.items() for _ in range(n)]
    owner = rng.integers(0, persons, len(labels))
    n = 0
    for seq, (label, person) in enumerate(zip(labels, owner)):
        srng = np.random.default_rng([seed, 1, seq])
        act, roll = sequence_actions(label, srng), srng.uniform(-3, 3)
        (out / label).mkdir(parents=True, exist_ok=True)
        for f, scale in enumerate(FRAMES):
            img = frame([seed, 2, int(person)], act, scale, roll + srng.normal(0, 0.5), srng)
            cv2.imwrite(str(out / label / f"S{person:03d}_{seq:03d}_{f:02d}.png"), img)
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--persons", type=int, default=118)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(f"{write_lab_set(Path(args.out), args.persons, args.seed)} images under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
