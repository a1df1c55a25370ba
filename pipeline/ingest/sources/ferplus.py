"""FERPlus: FER2013 relabelled by 10 annotators (`fer2013new.csv`).

Columns `Usage, Image name, neutral, happiness, surprise, sadness, anger, disgust, fear,
contempt, unknown, NF` (vote counts). The label is the majority vote over the 10 vote columns;
a tie for the top count is rejected (`label_tie`), a majority of `unknown` (`label_unknown`) or
`NF` (`label_not_face`) too, and so is a row without an image name (FERPlus drops those).
Class order (official): neutral, happy, surprise, sad, anger, disgust, fear, contempt.

Pixels come from the generated PNG folders `FER2013Train/`, `FER2013Valid/`, `FER2013Test/`
(FERPlus's generate_training_data.py) when present, else from `fer2013.csv` beside the label
file, matched by row (the two files list the same 35,887 images in the same order).
"""
from __future__ import annotations

import csv
import io
from typing import Iterator

from pipeline.ingest.records import FERPLUS_ORDER, record, reject
from pipeline.ingest.sources import fer2013, outside_detail, row_path

NAME = "ferplus"
ORDER = FERPLUS_ORDER
DEFAULT_CLASSES = 8
LABEL_FILE = "fer2013new.csv"
VOTES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
         "unknown", "nf")
VOTE_TO_NAME = dict(zip(VOTES[:8], FERPLUS_ORDER))
FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}


def majority(votes: dict[str, float]) -> tuple[str, str, str]:
    """Vote counts -> (canonical name, reject reason, detail)."""
    top = max(votes.values())
    winners = [k for k in VOTES if votes.get(k, 0) == top]
    shown = ",".join(f"{k}={votes[k]:g}" for k in VOTES if votes.get(k))
    if top <= 0:
        return "", "label_unknown", "no votes"
    if len(winners) > 1:
        return "", "label_tie", shown
    if winners[0] == "unknown":
        return "", "label_unknown", shown
    if winners[0] == "nf":
        return "", "label_not_face", shown
    return VOTE_TO_NAME[winners[0]], "", ""


def check_pairing(labels: list[dict], pixels: list[dict]) -> None:
    """Labels attach to fer2013.csv pixels by row index, so both files must list the same images
    in the same order: equal row counts and the same ``Usage`` on every row, else nothing is read."""
    if len(labels) != len(pixels):
        raise ValueError(f"{LABEL_FILE} has {len(labels)} rows but fer2013.csv has {len(pixels)}; labels are "
                         "matched to pixels by row, so both must be the complete, unmodified files")
    bad = [i for i, (lab, px) in enumerate(zip(labels, pixels))
           if {(k or "").strip().lower(): (v or "").strip() for k, v in lab.items()}.get("usage", "").lower()
           != px.get("usage", "").lower()]
    if bad:
        i = bad[0]
        raise ValueError(f"{LABEL_FILE} and fer2013.csv disagree on Usage at {len(bad)} row(s), first at data row "
                         f"{i} (line {i + 2}); labels are matched to pixels by row, so the files are not aligned")


def records(root, opts) -> Iterator[dict]:
    if not root.isfile(LABEL_FILE):
        raise FileNotFoundError(f"{root.uri}: no {LABEL_FILE}")
    use_folders = any(root.isdir(f) for f in FOLDERS.values())
    pixel_rows = None
    if not use_folders:
        if not root.isfile("fer2013.csv"):
            raise FileNotFoundError(f"{root.uri}: no FER2013Train/Valid/Test folders and no fer2013.csv "
                                    "to take the pixels from")
        pixel_rows = fer2013.rows(root)[1]
    table = list(csv.DictReader(io.StringIO(root.read_text(LABEL_FILE))))
    if pixel_rows is not None:
        check_pairing(table, pixel_rows)
    for i, raw in enumerate(table):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
        image = row.get("image name", "")
        split = fer2013.USAGE.get(row.get("usage", "").lower(), "")
        ref = f"{FOLDERS[split]}/{image}" if (use_folders and split and image) else f"{LABEL_FILE}:{i}"
        if not split:
            yield reject(ref, "", "unknown_split", f"Usage {row.get('usage', '')!r}")
            continue
        if not image:
            yield reject(ref, split, "label_not_face", "no image name (removed by FERPlus)")
            continue
        try:
            votes = {k: float(row.get(k) or 0) for k in VOTES}
        except ValueError:
            yield reject(ref, split, "unknown_label", "vote counts are not numbers")
            continue
        label, reason, detail = majority(votes)
        if reason:
            yield reject(ref, split, reason, detail)
            continue
        if use_folders:
            path = row_path(root, f"{FOLDERS[split]}/{image}", opts.allow_outside_input)
            if path is None:
                yield reject(ref, split, "outside_input", outside_detail(f"{LABEL_FILE}:{i}", image, root))
                continue
            yield record(ref, split, label, path=path)
            continue
        px = fer2013.parse_pixels(pixel_rows[i].get("pixels", "")) if i < len(pixel_rows) else None
        if px is None:
            yield reject(ref, split, "corrupt_image", f"fer2013.csv row {i} missing or bad")
            continue
        yield record(ref, split, label, data=px[0], raw_shape=px[1])
