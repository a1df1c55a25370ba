"""What runs inside Ray: the face actor (read, decode, detect, align, encode) and the shard writer.

Both are plain callables over pyarrow tables, so they also run without Ray (the benchmark's
single-process loop and unit tests call them directly).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass, field

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema as S
from pipeline.faces.align import FaceProcessor, NoFaceError, aligned_only, align_with_landmarks
from pipeline.ingest.records import OUT_SCHEMA

MIN_SIDE = 16
# Leading bytes of the image formats OpenCV/PIL decode; used to tell corrupt from non-image.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")


@dataclass
class StageConfig:
    """Settings of the face actor (all plain values: it is pickled to every actor)."""

    source: str
    classes: list[str]
    mode: str = "auto"            # auto: known landmarks if given, else detect; "skip"; "detect"
    margin: float = 0.8
    jpeg_quality: int = 95
    test_fraction: float = 0.0    # for records without a split: share sent to test (by sample_id)
    use_detector: bool = True     # False when every record has known landmarks (no mediapipe load)
    group_regex: str = ""         # --group-regex on source_ref -> the `group` column ("" = none)
    framing: dict | None = None   # pipeline.faces.framing spec the faces are cut in (None: project)
    detector_kwargs: dict = field(default_factory=dict)


class RejectError(Exception):
    def __init__(self, reason: str, detail: str = ""):
        assert reason in S.REJECT_REASONS, reason
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def decode_source_image(data: bytes, raw_shape=None) -> np.ndarray:
    """A raw source file (or raw gray pixels) -> RGB uint8 [H, W, 3]; raises RejectError with the reason.
    Not `pipeline.transforms.decode_image`, which reads the shards' own JPEGs at a fixed size."""
    if len(data) == 0:
        raise RejectError("empty_file", "0 bytes")
    if raw_shape is not None and len(raw_shape):
        h, w = (int(v) for v in raw_shape[:2])
        if h * w != len(data):
            raise RejectError("corrupt_image", f"{len(data)} pixel values for a {h}x{w} image")
        return np.repeat(np.frombuffer(data, np.uint8).reshape(h, w, 1), 3, axis=2)
    known = data.startswith(_SIGNATURES)
    if data.startswith(b"\xff\xd8") and not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        raise RejectError("corrupt_image", "truncated JPEG (no end-of-image marker)")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None and known:
        bgr = _decode_with_pil(data)  # e.g. GIF, which OpenCV does not read
    if bgr is None:
        if known:
            raise RejectError("corrupt_image", f"{len(data)} bytes that do not decode")
        # Size only: a reject's detail never quotes the file (it may not be ours to show).
        raise RejectError("not_an_image", f"{len(data)} bytes of no known image format")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _decode_with_pil(data: bytes):
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return cv2.cvtColor(np.asarray(im.convert("RGB")), cv2.COLOR_RGB2BGR)
    except Exception:
        return None


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


class _Reader:
    """Reads local paths and URIs, caching one pyarrow filesystem per scheme and bucket."""

    def __init__(self):
        self._fs: dict[str, object] = {}

    def read(self, path: str) -> bytes:
        try:
            if "://" not in path:
                with open(path, "rb") as f:
                    return f.read()
            key = "/".join(path.split("/", 3)[:3])  # scheme://bucket
            if key not in self._fs:
                self._fs[key] = S.filesystem(path)[0]
            with self._fs[key].open_input_stream(path.split("://", 1)[1]) as f:
                return f.read()
        except (OSError, ValueError) as e:
            raise RejectError("unreadable", f"{type(e).__name__}: {e}") from None


class FaceStage:
    """Ray Data actor: records -> shard rows, or rejects with a reason. Build once per actor."""

    def __init__(self, cfg: StageConfig):
        cv2.setNumThreads(1)  # one actor per core; OpenCV's own threads would oversubscribe
        os.environ.setdefault("GLOG_minloglevel", "2")
        self.cfg = cfg
        self.reader = _Reader()
        self.proc = None
        if cfg.use_detector:
            try:
                self.proc = FaceProcessor(margin=cfg.margin, framing=self._cut_framing(), **cfg.detector_kwargs)
            except ImportError:
                if cfg.mode != "skip":  # skip mode falls back to the mean shape
                    raise
        self.index = {name: i for i, name in enumerate(cfg.classes)}
        self.group_re = re.compile(cfg.group_regex) if cfg.group_regex else None

    def _cut_framing(self):
        from pipeline.faces import framing as FR

        # skip mode keeps the dataset's crop; the detector there only measures landmarks
        if self.cfg.framing is None or self.cfg.mode == "skip":
            return FR.project(self.cfg.margin)
        return FR.get(self.cfg.framing)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self.process(r) for r in batch.to_pylist()]
        return rows_to_table(rows)

    # one record -> one output row (never zero, never two: counts must reconcile)
    def process(self, r: dict) -> dict:
        out = {"source_ref": r["source_ref"], "split": r["split"], "source": self.cfg.source,
               "label_name": r["label_name"], "sample_id": "", "reason": r["reason"] or "",
               "detail": r["detail"] or ""}
        if self.group_re is not None:
            out["group"] = group_of(self.group_re, r["source_ref"])
        if out["reason"]:
            return out
        try:
            self._process(r, out)
        except RejectError as e:
            out["reason"], out["detail"] = e.reason, e.detail
        except Exception as e:  # keep the row: one bad input must not kill a 300k-image job
            out["reason"], out["detail"] = "processing_error", f"{type(e).__name__}: {e}"[:500]
        return out

    def _process(self, r: dict, out: dict) -> None:
        known = r["landmarks"] or None
        if r["synth"]:
            from pipeline import synth

            recipe = json.loads(r["synth"])
            face = synth.generate(recipe["label"], recipe["index"], recipe["seed"])
            rgb, known, data = face.image, face.landmarks.ravel().tolist(), face.image.tobytes()
        else:
            data = r["data"] if r["data"] else self.reader.read(r["path"])
            rgb = decode_source_image(data, r["raw_shape"])
        out["sample_id"] = S.sample_id(data)
        if min(rgb.shape[:2]) < MIN_SIDE:
            raise RejectError("image_too_small", f"{rgb.shape[1]}x{rgb.shape[0]}")
        if not out["split"]:  # a group (person) goes to one split as a whole
            out["split"] = _hash_split(out["sample_id"], self.cfg.test_fraction, out.get("group", ""))
        result = self._face(rgb, known, r["box"] or None)
        q = self.cfg.jpeg_quality
        out.update(image=encode_jpeg(result.image, q), landmark_crop=encode_jpeg(result.crop, q),
                   landmarks=result.landmarks.reshape(-1).astype(np.float32),
                   label=self.index[out["label_name"]], landmarks_from=result.landmarks_from,
                   border_fill=result.border_fill)

    def _face(self, rgb, known, box):
        mode = self.cfg.mode
        if mode == "skip":
            return aligned_only(rgb, self.proc)
        if known is not None and mode != "detect":
            lm = np.asarray(known, dtype=np.float64)
            if lm.size != 136:
                raise RejectError("bad_landmarks", f"{lm.size} values, expected 136")
            try:
                return align_with_landmarks(rgb, lm.reshape(68, 2), self.cfg.margin, framing=self._cut_framing())
            except NoFaceError as e:
                raise RejectError("bad_landmarks", str(e)) from None
        if self.proc is None:
            raise RuntimeError("this record needs the face detector, which is not loaded")
        try:
            return self.proc.process(rgb, box=box)
        except NoFaceError as e:
            raise RejectError("no_face", str(e)) from None


def group_of(pattern: "re.Pattern[str]", source_ref: str) -> str:
    """The group of one input: the regex's first capture group (or whole match); "" = none."""
    m = pattern.search(source_ref)
    if m is None:
        return ""
    return (m.group(1) if pattern.groups else m.group(0)) or ""


def _hash_split(sid: str, test_fraction: float, group: str = "") -> str:
    # by content, so copies of one image always land in the same split; by group when given
    if group:
        return "test" if S.digest_fraction(S.text_sha256(group)) < test_fraction else "train"
    return "test" if S.digest_fraction(sid) < test_fraction else "train"


def rows_to_table(rows: list[dict]) -> pa.Table:
    n = len(rows)
    lm = np.zeros((n, 2 * S.NUM_LANDMARKS), np.float32)
    for i, r in enumerate(rows):
        if "landmarks" in r:
            lm[i] = r["landmarks"]
    cols = {}
    for f in OUT_SCHEMA:
        if f.name == S.LANDMARKS:
            cols[f.name] = pa.FixedSizeListArray.from_arrays(pa.array(lm.reshape(-1)), 2 * S.NUM_LANDMARKS)
        elif f.name == S.LABEL:
            cols[f.name] = pa.array([r.get("label", -1) for r in rows], pa.int32())
        elif f.name == S.GROUP:  # null without --group-regex, so the writer leaves the column out
            cols[f.name] = pa.array([r.get(S.GROUP) for r in rows], pa.string())
        elif pa.types.is_binary(f.type):
            cols[f.name] = pa.array([r.get(f.name, b"") for r in rows], pa.binary())
        elif pa.types.is_floating(f.type):
            cols[f.name] = pa.array([float(r.get(f.name) or 0.0) for r in rows], f.type)
        else:
            cols[f.name] = pa.array([r.get(f.name, "") or "" for r in rows], f.type)
    return pa.table(cols, schema=OUT_SCHEMA)


# --- writer ------------------------------------------------------------------------------------

SUMMARY_SCHEMA = pa.schema([
    pa.field("source_ref", pa.string()), pa.field("split", pa.string()),
    pa.field("label", pa.int32()), pa.field("sample_id", pa.string()),
    pa.field("file", pa.string()), pa.field("row", pa.int32()),
    pa.field("reason", pa.string()), pa.field("detail", pa.string()),
    pa.field("digest", pa.string()), pa.field("landmarks_from", pa.string()),
    pa.field("border_fill", pa.float32()),
])


def write_shards(batch: pa.Table, staging: str) -> pa.Table:
    """Ray Data task: write the accepted rows of one batch as one Parquet shard per split.

    Returns one small summary row per input row (where it went, or why it was rejected), which
    is all the driver needs for counts, de-duplication and the content hash.
    """
    fs, base = S.filesystem(staging)
    reasons = batch.column("reason").to_pylist()
    splits = batch.column("split").to_pylist()
    out = {k: [] for k in SUMMARY_SCHEMA.names}
    rejected = [i for i, r in enumerate(reasons) if r]
    for i in rejected:
        _summary(out, batch, i, "", -1, "")
    groups = batch.column(S.GROUP).null_count < batch.num_rows  # --group-regex was given
    cols = [*S.COLUMNS, S.GROUP] if groups else list(S.COLUMNS)
    for split in sorted({splits[i] for i, r in enumerate(reasons) if not r}):
        idx = [i for i, r in enumerate(reasons) if not r and splits[i] == split]
        shard = batch.take(pa.array(idx)).select(cols).cast(S.shard_schema(cols))
        rel = f"{split}/part-{uuid.uuid4().hex[:16]}.parquet"
        fs.create_dir(S.join(base, split), recursive=True)
        pq.write_table(shard, S.join(base, rel), filesystem=fs, compression="zstd")
        for row, i in enumerate(idx):
            _summary(out, batch, i, rel, row, _digest(batch, i))
    return pa.table(out, schema=SUMMARY_SCHEMA)


def _summary(out, batch, i, file, row, digest):
    for k in ("source_ref", "split", "label", "sample_id", "reason", "detail", "landmarks_from", "border_fill"):
        out[k].append(batch.column(k)[i].as_py())
    out["file"].append(file)
    out["row"].append(row)
    out["digest"].append(digest)


def _digest(batch: pa.Table, i: int) -> str:
    h = hashlib.sha256()
    h.update(batch.column(S.IMAGE)[i].as_py())
    h.update(batch.column(S.LANDMARK_CROP)[i].as_py())
    h.update(np.asarray(batch.column(S.LANDMARKS)[i].as_py(), np.float32).tobytes())
    return h.hexdigest()[:32]
