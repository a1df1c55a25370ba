"""A Hugging Face dataset saved locally: `datasets.save_to_disk` output or a folder of Parquet.

Offline only (nothing is resolved on the Hub). Splits come from the DatasetDict keys, or from
Parquet file/folder names (`train-*.parquet`, `data/test/...`); validation -> val. The image column
(`image`/`img`, or `--image-column`) holds HF Image structs {bytes, path} or raw bytes; the label
column (`label`/`labels`/`emotion`/`expression`, or `--label-column`) is a ClassLabel (its names are
mapped through the alias table), a name, or an id interpreted with `--label-map`.
"""
from __future__ import annotations

import json
from typing import Iterator

from pipeline.ingest.records import GENERIC_ORDER, map_label, map_split, record, reject
from pipeline.ingest.sources import outside_detail, row_path

NAME = "hf"
ORDER = GENERIC_ORDER
DEFAULT_CLASSES = 7
IMAGE_COLUMNS = ("image", "img", "picture")
LABEL_COLUMNS = ("label", "labels", "emotion", "expression")


def _pick(names, wanted: str | None, candidates, what: str) -> str:
    if wanted:
        if wanted not in names:
            raise ValueError(f"--{what}-column {wanted!r} not in columns {names}")
        return wanted
    for c in candidates:
        if c in names:
            return c
    raise ValueError(f"no {what} column among {names}; pass --{what}-column")


def _tables(root) -> Iterator[tuple[str, object, list[str] | None]]:
    """(split name, pyarrow table, ClassLabel names or None) per split."""
    if root.isfile("dataset_dict.json") or root.isfile("state.json"):
        import datasets  # only this layout needs the datasets package

        ds = datasets.load_from_disk(root.path())
        parts = ds.items() if isinstance(ds, datasets.DatasetDict) else [("", ds)]
        for split, d in parts:
            yield split, d.data.table, _class_names(d.features)
        return
    files = [f for f in root.walk_files() if f.endswith(".parquet")]
    if not files:
        raise FileNotFoundError(f"{root.uri}: neither a save_to_disk folder nor Parquet files")
    import pyarrow.parquet as pq

    for rel in files:
        t = pq.read_table(root.path(rel), filesystem=root.fs)
        meta = (t.schema.metadata or {}).get(b"huggingface")
        names = None
        if meta:
            feats = json.loads(meta).get("info", {}).get("features", {})
            names = _class_names_json(feats)
        yield _split_from_path(rel), t, names


def _split_from_path(rel: str) -> str:
    for part in reversed(rel.replace(".parquet", "").split("/")):
        head = part.split("-")[0]
        if map_split(head):
            return head
    return ""


def _class_names(features) -> dict[str, list[str]]:
    out = {}
    for k, f in features.items():
        if getattr(f, "names", None):
            out[k] = list(f.names)
    return out


def _class_names_json(feats: dict) -> dict[str, list[str]]:
    return {k: f["names"] for k, f in feats.items() if isinstance(f, dict) and f.get("names")}


def records(root, opts) -> Iterator[dict]:
    for raw_split, table, class_names in _tables(root):
        split = map_split(raw_split) if raw_split else ""
        img_col = _pick(table.column_names, opts.image_column, IMAGE_COLUMNS, "image")
        lab_col = _pick(table.column_names, opts.label_column, LABEL_COLUMNS, "label")
        names = (class_names or {}).get(lab_col)
        images = table.column(img_col).to_pylist()
        labels = table.column(lab_col).to_pylist()
        for i, (img, lab) in enumerate(zip(images, labels)):
            ref = f"{raw_split or 'data'}[{i}]"
            if raw_split and not split:
                yield reject(ref, "", "unknown_split", f"split {raw_split!r}")
                continue
            raw = names[lab] if names is not None and isinstance(lab, int) and 0 <= lab < len(names) else lab
            label, reason, detail = map_label(raw, opts.label_map)
            if reason:
                yield reject(ref, split, reason, detail)
                continue
            data, path = _image_bytes(img)
            if not data and not path:
                yield reject(ref, split, "empty_file", "no image bytes or path")
                continue
            if not data:  # a path instead of bytes: relative to the dataset folder, and inside it
                named, path = path, row_path(root, path, opts.allow_outside_input)
                if path is None:
                    yield reject(ref, split, "outside_input", outside_detail(ref, named, root))
                    continue
            yield record(ref, split, label, data=data or b"", path="" if data else path)


def _image_bytes(img) -> tuple[bytes | None, str]:
    if isinstance(img, dict):
        return img.get("bytes"), img.get("path") or ""
    if isinstance(img, (bytes, bytearray)):
        return bytes(img), ""
    return None, ""
