"""The record stream every source adapter yields, and the label/split vocabularies.

A record is a plain dict (see `record()`); the driver turns the stream into one Arrow table with
`RECORD_SCHEMA` and hands it to Ray Data. Records are cheap references (a path, a CSV row's
pixels, a synthetic recipe); the expensive work (read, decode, detect, align, encode) happens in
the actor pool. A record an adapter already knows is bad carries `reason`/`detail` and is passed
through the pool untouched, so every input ends up either in a shard or in `_rejects.parquet`.
"""
from __future__ import annotations

from typing import Iterable

import pyarrow as pa

from pipeline import schema as S
# Official label orders (index = the dataset's own label id) live with the class vocabulary.
from pipeline.schema import AFFECTNET_ORDER, FER2013_ORDER, FERPLUS_ORDER, RAFDB_ORDER  # noqa: F401

RECORD_SCHEMA = pa.schema([
    pa.field("source_ref", pa.string()),
    pa.field("split", pa.string()),          # "" = the source has no split: assigned in the pool
    pa.field("label_name", pa.string()),     # canonical name, "" when rejected
    pa.field("path", pa.string()),           # file to read (local path or URI), or ""
    pa.field("data", pa.binary()),           # inline bytes (encoded image, or raw pixels), or b""
    pa.field("raw_shape", pa.list_(pa.int32())),    # [h, w] when `data` is raw uint8 pixels
    pa.field("landmarks", pa.list_(pa.float32())),  # 136 known iBUG coordinates in source pixels
    pa.field("box", pa.list_(pa.float32())),        # known face box x, y, w, h in source pixels
    pa.field("synth", pa.string()),          # JSON recipe for the synthetic generator, or ""
    pa.field("reason", pa.string()),         # reject reason decided by the adapter, or ""
    pa.field("detail", pa.string()),
])

# What the actor pool returns: the shard columns plus the reject reason carried through the map.
OUT_SCHEMA = pa.schema([f.with_nullable(True) for f in S.SCHEMA]
                       + [pa.field("reason", pa.string()), pa.field("detail", pa.string()),
                          pa.field("landmarks_from", pa.string()), pa.field("border_fill", pa.float32()),
                          S.GROUP_FIELD.with_nullable(True)])


def record(source_ref: str, split: str = "", label_name: str = "", *, path: str = "",
           data: bytes = b"", raw_shape: Iterable[int] = (), landmarks: Iterable[float] = (),
           box: Iterable[float] = (), synth: str = "", reason: str = "", detail: str = "") -> dict:
    """One input. Exactly one of `path`, `data` or `synth` says where the pixels come from."""
    return {"source_ref": source_ref, "split": split, "label_name": label_name, "path": path,
            "data": data, "raw_shape": list(raw_shape), "landmarks": list(landmarks),
            "box": list(box), "synth": synth, "reason": reason, "detail": detail}


def reject(source_ref: str, split: str, reason: str, detail: str = "") -> dict:
    assert reason in S.REJECT_REASONS, reason
    return record(source_ref, split, reason=reason, detail=detail)


# --- labels -------------------------------------------------------------------------------------

# Names seen in the wild -> canonical names (docs/design.md vocabulary).
LABEL_ALIASES: dict[str, str] = {c: c for c in S.CANONICAL_CLASSES}
LABEL_ALIASES.update({
    "happiness": "happy", "joy": "happy", "sadness": "sad", "surprised": "surprise",
    "fearful": "fear", "afraid": "fear", "scared": "fear", "disgusted": "disgust",
    "angry": "anger", "contemptuous": "contempt", "neutrality": "neutral",
})


# Raw label -> canonical name, or "!reason" for labels a dataset defines but we never train on.
LABEL_MAPS: dict[str, dict[str, str]] = {
    "rafdb": {str(i + 1): c for i, c in enumerate(RAFDB_ORDER)},
    "affectnet": {**{str(i): c for i, c in enumerate(AFFECTNET_ORDER)},
                  "8": "!label_none", "9": "!label_uncertain", "10": "!label_no_face"},
    "fer2013": {str(i): c for i, c in enumerate(FER2013_ORDER)},
    "ferplus": {str(i): c for i, c in enumerate(FERPLUS_ORDER)},
}


def parse_label_map(spec: str | None) -> dict[str, str] | None:
    """`--label-map`: a dataset name from LABEL_MAPS, or inline `raw=name,raw=name`."""
    if not spec:
        return None
    if spec in LABEL_MAPS:
        return LABEL_MAPS[spec]
    out = {}
    for item in spec.split(","):
        raw, sep, name = item.partition("=")
        if not sep:
            raise ValueError(f"--label-map: expected a dataset name {sorted(LABEL_MAPS)} or "
                             f"raw=name pairs, got {spec!r}")
        canon = LABEL_ALIASES.get(name.strip().lower())
        if canon is None:
            raise ValueError(f"--label-map: {name!r} is not a known expression name")
        out[raw.strip()] = canon
    return out


def map_label(raw: object, label_map: dict[str, str] | None = None) -> tuple[str, str, str]:
    """Raw label -> (canonical name, reject reason, detail); exactly one of name/reason is set."""
    key = str(raw).strip()
    if label_map is not None and key in label_map:
        name = label_map[key]
    else:
        name = LABEL_ALIASES.get(key.lower(), "")
    if name.startswith("!"):
        return "", name[1:], f"label {key}"
    if not name:
        return "", "unknown_label", f"label {key!r}"
    return name, "", ""


def labelled(source_ref: str, split: str, raw_label: object, label_map: dict[str, str] | None,
             **fields) -> dict:
    """`record(...)` with the mapped label, or the reject that says why the label is unusable."""
    label, reason, detail = map_label(raw_label, label_map)
    return reject(source_ref, split, reason, detail) if reason else record(source_ref, split, label, **fields)


# Class order of the generic sources (folder, csv): canonical, contempt last.
GENERIC_ORDER = S.CANONICAL_CLASSES


def resolve_classes(official: tuple[str, ...], n_classes: int | None = None,
                    class_names: list[str] | None = None, order: str = "official") -> list[str]:
    """Class index order written to the manifest.

    `official`: the source's own order (so released checkpoints map directly); `canonical`: the
    design.md vocabulary order. `class_names` picks an explicit subset (in the order given unless
    order == "canonical"); otherwise `n_classes` 7 drops contempt, 8 keeps it.
    """
    if order not in ("official", "canonical"):
        raise ValueError(f"class order must be 'official' or 'canonical', got {order!r}")
    if class_names:
        names = []
        for n in class_names:
            canon = LABEL_ALIASES.get(n.strip().lower())
            if canon is None:
                raise ValueError(f"--class-names: {n!r} is not a known expression name")
            if canon not in names:
                names.append(canon)
        return [c for c in S.CANONICAL_CLASSES if c in names] if order == "canonical" else names
    n = n_classes or len(official)
    if n not in (7, 8):
        raise ValueError(f"--classes must be 7 or 8, got {n}")
    keep = set(S.CANONICAL_CLASSES[:n])
    if order == "canonical":
        return [c for c in S.CANONICAL_CLASSES if c in keep]
    return [c for c in official if c in keep] + [c for c in S.CANONICAL_CLASSES
                                                   if c in keep and c not in official]


# --- splits -------------------------------------------------------------------------------------

SPLIT_ALIASES = {
    "train": "train", "training": "train", "train_set": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val", "publictest": "val",
    "test": "test", "testing": "test", "privatetest": "test",
}


def map_split(raw: str) -> str:
    """Split name -> train/val/test, or "" when unknown."""
    return SPLIT_ALIASES.get(str(raw).strip().lower(), "")
