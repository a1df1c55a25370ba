"""bench/lab_set.py, the CK+48-like proxy of the issue's held-out check: CK+'s sequence counts, 3
near-duplicate frames a sequence, one identity a person, names the ingest's --group-regex reads."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
from PIL import Image

from bench_scripts import load_bench


def test_lab_set_has_ck_counts_sequences_and_people(tmp_path):
    lab = load_bench("lab_set")
    assert lab.write_lab_set(tmp_path, persons=40, seed=3) == 3 * sum(lab.CK_SEQUENCES.values())
    files = sorted(tmp_path.glob("*/*.png"))
    assert Counter(f.parent.name for f in files) == {k: 3 * n for k, n in lab.CK_SEQUENCES.items()}
    pattern = re.compile(lab.PERSON_REGEX)
    people = Counter(pattern.search(str(f)).group(1) for f in files)
    assert 30 <= len(people) <= 40  # every sequence belongs to one of the 40 people
    img = {f.stem: np.asarray(Image.open(f), np.float32) for f in files}
    assert all(a.shape == (48, 48) for a in img.values())

    # a sequence's frames are near-duplicates; another person's face is not
    seq = sorted(k for k in img if k.split("_")[1] == files[0].stem.split("_")[1])
    assert len(seq) == 3
    within = np.abs(img[seq[0]] - img[seq[2]]).mean()
    other = next(k for k in img if k.split("_")[0] != seq[0].split("_")[0])
    between = np.abs(img[seq[0]] - img[other]).mean()
    assert within < 0.5 * between, (within, between)
