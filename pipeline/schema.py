"""The shard contract (docs/design.md, "Shards"): column names, Arrow schema, manifest reader.

Ingest writes it, training/evaluation/review read it. Change docs/design.md first, then this file,
and bump SCHEMA_VERSION when a reader would break.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1

CANONICAL_CLASSES: tuple[str, ...] = (
    "neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
SPLITS: tuple[str, ...] = ("train", "val", "test")
# Official label orders, in canonical names (index = the dataset's own label id).
RAFDB_ORDER = ("surprise", "fear", "disgust", "happy", "sad", "anger", "neutral")      # ids 1..7
AFFECTNET_ORDER = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")  # 0..7
FER2013_ORDER = ("anger", "disgust", "fear", "happy", "sad", "surprise", "neutral")    # ids 0..6
FERPLUS_ORDER = ("neutral", "happy", "surprise", "sad", "anger", "disgust", "fear", "contempt")

IMAGE_SIZE = 224
CROP_SIZE = 112
NUM_LANDMARKS = 68

# Column names, so readers do not spell strings.
SAMPLE_ID = "sample_id"
IMAGE = "image"
LANDMARK_CROP = "landmark_crop"
LANDMARKS = "landmarks"
LABEL = "label"
LABEL_NAME = "label_name"
SPLIT = "split"
# The columns training evaluation, `pipeline.evaluate` and the review read from a split.
EVAL_COLUMNS = [SAMPLE_ID, IMAGE, LANDMARK_CROP, LABEL]
SOURCE = "source"
SOURCE_REF = "source_ref"

SCHEMA = pa.schema([
    pa.field(SAMPLE_ID, pa.string(), nullable=False),
    pa.field(IMAGE, pa.binary(), nullable=False),
    pa.field(LANDMARK_CROP, pa.binary(), nullable=False),
    pa.field(LANDMARKS, pa.list_(pa.float32(), 2 * NUM_LANDMARKS), nullable=False),
    pa.field(LABEL, pa.int32(), nullable=False),
    pa.field(LABEL_NAME, pa.string(), nullable=False),
    pa.field(SPLIT, pa.string(), nullable=False),
    pa.field(SOURCE, pa.string(), nullable=False),
    pa.field(SOURCE_REF, pa.string(), nullable=False),
], metadata={b"schema_version": str(SCHEMA_VERSION).encode()})
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)

# Optional column (same schema version: readers select the columns they need, so shards without
# it stay readable): the person/sequence a row belongs to, from ingest --group-regex. The val
# carve (data.group_column) and the ingest's test split hash it, so a group stays on one side.
GROUP = "group"
GROUP_FIELD = pa.field(GROUP, pa.string(), nullable=False)


def sample_id(data: bytes) -> str:
    """design.md: sha256 of the source bytes, first 16 bytes as 32 hex characters."""
    return hashlib.sha256(data).hexdigest()[:32]


def digest_fraction(hex_digest: str, word: int = 0) -> float:
    """Stable value in [0, 1) from hex digits 8*word .. 8*word+7 of a digest: the test split and the
    eval sharding use word 0 (of the sample id, or of the group's sha256), the val carve word 1."""
    return int(hex_digest[8 * word:8 * word + 8], 16) / 16**8


def hash_fraction(sample_ids) -> np.ndarray:
    """`digest_fraction` of each sample id, as a float64 array."""
    return np.array([digest_fraction(str(s)) for s in sample_ids], dtype=np.float64)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def shard_schema(names) -> pa.Schema:
    """SCHEMA, plus the optional group column when ``names`` has it."""
    return SCHEMA.append(GROUP_FIELD) if GROUP in names else SCHEMA

REJECTS_SCHEMA = pa.schema([
    pa.field(SOURCE_REF, pa.string()),
    pa.field(SPLIT, pa.string()),
    pa.field("reason", pa.string()),
    pa.field("detail", pa.string()),
])

# Every reason a row can end up in _rejects.parquet (docs/ingest.md explains each).
REJECT_REASONS: tuple[str, ...] = (
    "unreadable",              # the file could not be read (missing, permissions, I/O)
    "empty_file",              # zero bytes
    "not_an_image",            # bytes are no known image format
    "corrupt_image",           # an image format that does not decode (or a truncated JPEG)
    "image_too_small",         # decodes, but under 16 px on a side
    "unknown_label",           # label not in the source's vocabulary
    "class_excluded",          # a valid label outside --classes / --class-names
    "label_none",              # AffectNet 8
    "label_uncertain",         # AffectNet 9
    "label_no_face",           # AffectNet 10
    "label_tie",               # FERPlus: no single majority emotion
    "label_unknown",           # FERPlus: majority "unknown"
    "label_not_face",          # FERPlus: majority "not a face" (NF) or no image name
    "outside_input",           # a listed path escapes the input root (.., absolute, other scheme/bucket)
    "unknown_split",           # split name that maps to none of train/val/test
    "bad_landmarks",           # given landmarks malformed or degenerate
    "no_face",                 # the detector found no face
    "duplicate_across_splits",  # same sample_id already kept in a more held-out split
    "duplicate",               # same sample_id already kept in this split (--dedupe)
    "processing_error",        # anything unexpected; detail has the exception
)

MANIFEST = "_manifest.json"
REJECTS = "_rejects.parquet"
REQUIRED_MANIFEST_KEYS = ("schema_version", "classes", "counts", "source", "detector", "read",
                          "written", "rejected", "content_hash")


class SchemaError(ValueError):
    """A table, schema or manifest does not match the shard contract."""


def validate_schema(table_or_schema: pa.Table | pa.Schema, where: str = "table") -> None:
    """Raise SchemaError naming every missing or mistyped column; extra columns are allowed.

    Args:
        table_or_schema: a pyarrow Table/RecordBatch or Schema (e.g. `pq.read_schema(path)`).
        where: what is being checked, for the message (a path or "train shards").
    """
    schema = table_or_schema if isinstance(table_or_schema, pa.Schema) else table_or_schema.schema
    problems = []
    for field in SCHEMA:
        idx = schema.get_field_index(field.name)
        if idx < 0:
            problems.append(f"missing column {field.name!r} ({field.type})")
            continue
        got = schema.field(idx).type
        # large_* variants are the same data; readers cast them.
        ok = got == field.type or {got, field.type} in ({pa.binary(), pa.large_binary()},
                                                       {pa.string(), pa.large_string()})
        if not ok:
            problems.append(f"column {field.name!r} is {got}, expected {field.type}")
    if problems:
        raise SchemaError(f"{where}: schema v{SCHEMA_VERSION} mismatch: " + "; ".join(problems))


def filesystem(uri: str):
    """(pyarrow FileSystem, path) for a local path or a URI such as s3://bucket/x or file:///x."""
    from pipeline.storage import filesystem as fs_of

    return fs_of(uri)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def read_manifest(root: str) -> dict[str, Any]:
    """Read and check `<root>/_manifest.json` (local path or URI).

    Raises:
        FileNotFoundError: no manifest, i.e. no completed ingest at `root`.
        SchemaError: a manifest of another schema version or missing required keys.
    """
    fs, path = filesystem(str(root))
    mpath = join(path, MANIFEST)
    try:
        with fs.open_input_stream(mpath) as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{root}: no {MANIFEST}; not a completed ingest output") from None
    missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in manifest]
    if missing:
        raise SchemaError(f"{root}/{MANIFEST}: missing keys {missing}")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise SchemaError(f"{root}/{MANIFEST}: schema_version {manifest['schema_version']}, "
                          f"this code reads {SCHEMA_VERSION}")
    return manifest


def shard_files(root: str, manifest: dict[str, Any], split: str) -> list[str]:
    """The Parquet files of ``split`` that the manifest lists (paths or URIs under ``root``).

    Readers use this list, never a directory listing: a file the manifest does not count (a
    re-executed write task's first attempt, a stray copy) must not reach training or evaluation.
    """
    listed = manifest.get("shards")
    if not isinstance(listed, list):
        raise SchemaError(f"{root}/{MANIFEST} lists no shard files (an ingest from before shard lists); "
                          "re-run `python -m pipeline.ingest` to rewrite it")
    files = [join(str(root), s["path"]) for s in listed if s.get("split") == split]
    if not files and sum(manifest.get("counts", {}).get(split, {}).values()) > 0:
        raise SchemaError(f"{root}/{MANIFEST} counts rows in split {split!r} but lists no shard files for it")
    return files
