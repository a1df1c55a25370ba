"""Source adapters on tiny fixture trees in each dataset's real layout (no Ray).

Each test writes the layout, enumerates the records, checks labels/splits/adapter rejects, and
pushes the good records through the face stage in-process where the pixels matter.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow as pa
import pytest

from pipeline import schema as S
from pipeline.ingest import IngestOptions
from pipeline.ingest.core import plan_records
from pipeline.ingest.records import (AFFECTNET_ORDER, FER2013_ORDER, FERPLUS_ORDER, RAFDB_ORDER,
                                     RECORD_SCHEMA, map_label, parse_label_map, resolve_classes)
from pipeline.ingest.stage import FaceStage, StageConfig
from pipeline.synth import generate


def face_jpeg(label: str = "happy", i: int = 0, size: int | None = None) -> bytes:
    img = generate(label, i, seed=7).image
    if size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()


def plan_of(source: str, input: str | None = None, **options):
    """The planning step alone (no Ray): it reads the input side of the options, never `out`."""
    return plan_records(IngestOptions(source, "never-written", input, **options))


def write(path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def by_ref(recs) -> dict[str, dict]:
    return {r["source_ref"]: r for r in recs}


def run_stage(recs, classes, source="test", mode="auto", use_detector=False) -> list[dict]:
    stage = FaceStage(StageConfig(source=source, classes=classes, mode=mode, use_detector=use_detector))
    out = stage(pa.Table.from_pylist(recs, schema=RECORD_SCHEMA))
    return out.to_pylist()


# --- labels and class orders --------------------------------------------------------------------

def test_class_orders_follow_the_official_checkpoints():
    assert resolve_classes(RAFDB_ORDER, 7) == list(RAFDB_ORDER)
    assert resolve_classes(AFFECTNET_ORDER, 7) == list(AFFECTNET_ORDER[:7])
    assert resolve_classes(AFFECTNET_ORDER, 8) == list(AFFECTNET_ORDER)
    assert resolve_classes(FER2013_ORDER, 7, order="canonical") == list(S.CANONICAL_CLASSES[:7])
    assert resolve_classes(RAFDB_ORDER, 8)[-1] == "contempt"
    assert resolve_classes(RAFDB_ORDER, class_names=["Happiness", "neutral"]) == ["happy", "neutral"]
    assert resolve_classes(RAFDB_ORDER, class_names=["neutral", "happy"], order="canonical") == [
        "neutral", "happy"]
    with pytest.raises(ValueError, match="--class-names"):
        resolve_classes(RAFDB_ORDER, class_names=["bored"])


def test_label_maps_and_aliases():
    assert map_label("angry") == ("anger", "", "")
    assert map_label("7", parse_label_map("rafdb"))[0] == "neutral"
    assert map_label("10", parse_label_map("affectnet"))[1] == "label_no_face"
    assert map_label("bored")[1] == "unknown_label"
    assert parse_label_map("0=happy,1=sad") == {"0": "happy", "1": "sad"}
    with pytest.raises(ValueError):
        parse_label_map("0=bored")


# --- RAF-DB -------------------------------------------------------------------------------------

def test_rafdb_layout(tmp_path):
    root = tmp_path / "raf-basic"
    write(root / "EmoLabel/list_patition_label.txt",
          "train_00001.jpg 4\ntrain_00002.jpg 7\ntest_0001.jpg 1\ntest_0002.jpg 9\nval_0001.jpg 2\n")
    for name, lab in [("train_00001", "happy"), ("train_00002", "neutral"), ("test_0001", "surprise")]:
        write(root / f"Image/aligned/{name}_aligned.jpg", face_jpeg(lab, size=100))
    plan = plan_of("rafdb", str(root))
    assert plan.classes == list(RAFDB_ORDER)
    recs = by_ref(plan.records)
    assert recs["Image/aligned/train_00001_aligned.jpg"]["label_name"] == "happy"
    assert recs["Image/aligned/train_00001_aligned.jpg"]["split"] == "train"
    assert recs["Image/aligned/test_0001_aligned.jpg"]["split"] == "test"
    assert recs["Image/aligned/test_0002_aligned.jpg"]["reason"] == "unknown_label"
    assert recs["Image/aligned/val_0001_aligned.jpg"]["reason"] == "unknown_split"
    good = [r for r in plan.records if not r["reason"]]
    rows = run_stage(good, plan.classes, mode="skip")
    assert [r["reason"] for r in rows] == ["", "", ""]
    assert [r["label"] for r in rows] == [3, 6, 0]  # RAF order: happy=3, neutral=6, surprise=0
    assert rows[0]["landmarks_from"] == "mean_shape"  # skip mode without a detector
    img = cv2.imdecode(np.frombuffer(rows[0]["image"], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (224, 224, 3)


# --- AffectNet ----------------------------------------------------------------------------------

def test_affectnet_v1_layout(tmp_path):
    write(tmp_path / "train_set/train_annotations_7class.txt", "1.jpg 1\n2.jpg 8\n3.jpg 6\n")
    write(tmp_path / "train_set/train_annotations_8class.txt", "1.jpg 1\n2.jpg 8\n3.jpg 6\n4.jpg 7\n")
    write(tmp_path / "valid_set/valid_annotations_7class.txt", "10.jpg 0\n11.jpg 10\n12.jpg 9\n13.jpg 12\n")
    plan7 = plan_of("affectnet", str(tmp_path))
    r = by_ref(plan7.records)
    assert plan7.classes == list(AFFECTNET_ORDER[:7])
    assert r["train_set/images/1.jpg"]["label_name"] == "happy"
    assert r["train_set/images/3.jpg"]["label_name"] == "anger"
    assert r["train_set/images/2.jpg"]["reason"] == "label_none"
    assert r["valid_set/images/10.jpg"]["split"] == "test"  # AffectNet's validation set is the test set
    assert r["valid_set/images/11.jpg"]["reason"] == "label_no_face"
    assert r["valid_set/images/12.jpg"]["reason"] == "label_uncertain"
    assert r["valid_set/images/13.jpg"]["reason"] == "unknown_label"
    assert "train_set/images/4.jpg" not in r  # the 7-class file was preferred
    plan8 = plan_of("affectnet", str(tmp_path), classes=8)
    r8 = by_ref(plan8.records)
    assert r8["train_set/images/4.jpg"]["label_name"] == "contempt" and plan8.classes[7] == "contempt"
    assert r8["train_set/images/4.jpg"]["path"].endswith("train_set/images/4.jpg")


def test_affectnet_csv_layout_uses_known_landmarks(tmp_path):
    face = generate("sad", 3, seed=1)
    write(tmp_path / "Manually_Annotated_Images/5/a.jpg",
          cv2.imencode(".png", cv2.cvtColor(face.image, cv2.COLOR_RGB2BGR))[1].tobytes())
    lm = ";".join(f"{v:.2f}" for v in face.landmarks.ravel())
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
    write(tmp_path / "training.csv", header + f"5/a.jpg,40,40,140,150,{lm},2,-0.5,0.2\n"
          + "5/b.jpg,0,0,10,10,,9,0,0\n")
    write(tmp_path / "validation.csv", header + "6/c.jpg,0,0,10,10,1;2,7,0,0\n")
    plan = plan_of("affectnet", str(tmp_path))
    r = by_ref(plan.records)
    a = r["Manually_Annotated_Images/5/a.jpg"]
    assert a["label_name"] == "sad" and len(a["landmarks"]) == 136 and a["box"] == [40, 40, 140, 150]
    assert r["Manually_Annotated_Images/5/b.jpg"]["reason"] == "label_uncertain"
    assert r["Manually_Annotated_Images/6/c.jpg"]["reason"] == "class_excluded"  # contempt, 7 classes
    assert r["Manually_Annotated_Images/6/c.jpg"]["landmarks"] == []  # malformed -> detector instead
    (row,) = run_stage([a], plan.classes)
    assert row["reason"] == "" and row["landmarks_from"] == "known" and row["label"] == 2
    lm_al = np.asarray(row["landmarks"]).reshape(68, 2)
    eyes = lm_al[36:42].mean(0), lm_al[42:48].mean(0)
    assert abs(eyes[0][1] - eyes[1][1]) < 0.01  # aligned: eye line horizontal


# --- FER2013 / FERPlus --------------------------------------------------------------------------

def _pixels(i: int) -> str:
    img = cv2.cvtColor(cv2.resize(generate("happy", i, 2).image, (48, 48)), cv2.COLOR_RGB2GRAY)
    return " ".join(str(v) for v in img.ravel())


def test_fer2013_csv(tmp_path):
    write(tmp_path / "fer2013.csv", "emotion,pixels,Usage\n"
          f"3,{_pixels(0)},Training\n6,{_pixels(1)},PublicTest\n0,{_pixels(2)},PrivateTest\n"
          "4,1 2 3,Training\n2,{0},Other\n9,{0},Training\n".replace("{0}", _pixels(3)))
    plan = plan_of("fer2013", str(tmp_path))
    assert plan.classes == list(FER2013_ORDER)
    recs = plan.records
    assert [(r["split"], r["label_name"]) for r in recs[:3]] == [("train", "happy"), ("val", "neutral"),
                                                                  ("test", "anger")]
    assert [r["reason"] for r in recs[3:]] == ["corrupt_image", "unknown_split", "unknown_label"]
    assert recs[0]["source_ref"] == "fer2013.csv:0" and recs[0]["raw_shape"] == [48, 48]
    rows = run_stage(recs[:3], plan.classes, mode="skip")
    assert [r["label"] for r in rows] == [3, 6, 0]
    assert len({r["sample_id"] for r in rows}) == 3
    # the same file given directly works too
    assert len(plan_of("fer2013", str(tmp_path / "fer2013.csv")).records) == 6


FERPLUS_HEADER = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n"
FERPLUS_ROWS = [
    ("Training", "fer0000000.png", "0,9,1,0,0,0,0,0,0,0"),   # happy
    ("Training", "fer0000001.png", "4,4,0,0,0,0,0,0,2,0"),   # tie
    ("PublicTest", "fer0000002.png", "1,0,0,0,0,0,0,0,9,0"),  # unknown
    ("PrivateTest", "fer0000003.png", "0,0,0,0,0,0,0,0,2,8"),  # not a face
    ("Training", "", "0,0,0,0,0,0,0,0,0,10"),               # removed image
    ("PrivateTest", "fer0000005.png", "2,0,0,0,0,0,0,6,2,0"),  # contempt
]


def _ferplus_labels(root):
    write(root / "fer2013new.csv", FERPLUS_HEADER + "".join(f"{u},{n},{v}\n" for u, n, v in FERPLUS_ROWS))


def test_ferplus_majority_vote_with_png_folders(tmp_path):
    _ferplus_labels(tmp_path)
    for usage, name, _ in FERPLUS_ROWS:
        folder = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}[usage]
        if name:
            write(tmp_path / folder / name, face_jpeg(size=48))
    plan = plan_of("ferplus", str(tmp_path))
    assert plan.classes == list(FERPLUS_ORDER)  # 8 classes by default, FERPlus order
    reasons = [r["reason"] or r["label_name"] for r in plan.records]
    assert reasons == ["happy", "label_tie", "label_unknown", "label_not_face", "label_not_face", "contempt"]
    assert plan.records[0]["path"].endswith("FER2013Train/fer0000000.png")
    assert "neutral=4,happiness=4" in plan.records[1]["detail"]
    plan7 = plan_of("ferplus", str(tmp_path), classes=7)
    assert plan7.records[5]["reason"] == "class_excluded"


def test_ferplus_pixels_from_fer2013_csv(tmp_path):
    _ferplus_labels(tmp_path)
    write(tmp_path / "fer2013.csv", "emotion,pixels,Usage\n"
          + "".join(f"3,{_pixels(i)},{u}\n" for i, (u, _, _) in enumerate(FERPLUS_ROWS)))
    plan = plan_of("ferplus", str(tmp_path))
    first = plan.records[0]
    assert first["label_name"] == "happy" and first["raw_shape"] == [48, 48] and first["path"] == ""
    (row,) = run_stage([first], plan.classes, mode="skip")
    assert row["reason"] == "" and row["label"] == 1


def test_ferplus_refuses_pixels_that_do_not_line_up(tmp_path):
    """Labels attach to fer2013.csv pixels by row: a missing row or a Usage that differs means
    every later label would sit on the wrong face, so nothing is read."""
    _ferplus_labels(tmp_path)
    usages = [u for u, _, _ in FERPLUS_ROWS]
    write(tmp_path / "fer2013.csv", "emotion,pixels,Usage\n"
          + "".join(f"3,{_pixels(i)},{u}\n" for i, u in enumerate(usages[:-1])))
    with pytest.raises(ValueError, match="has 6 rows but fer2013.csv has 5"):
        plan_of("ferplus", str(tmp_path))
    swapped = usages[:1] + [usages[2], usages[1]] + usages[3:]
    write(tmp_path / "fer2013.csv", "emotion,pixels,Usage\n"
          + "".join(f"3,{_pixels(i)},{u}\n" for i, u in enumerate(swapped)))
    with pytest.raises(ValueError, match="disagree on Usage at 2 row.*first at data row 1"):
        plan_of("ferplus", str(tmp_path))


# --- generic layouts ----------------------------------------------------------------------------

def test_folder_with_and_without_splits(tmp_path):
    a = tmp_path / "split"
    write(a / "train/happiness/1.jpg", face_jpeg())
    write(a / "train/angry/2.jpg", face_jpeg("anger"))
    write(a / "test/neutral/3.jpg", face_jpeg("neutral"))
    write(a / "test/neutral/.DS_Store", b"junk")  # dot files are skipped
    plan = plan_of("folder", str(a))
    got = {r["source_ref"]: (r["split"], r["label_name"]) for r in plan.records}
    assert got == {"train/happiness/1.jpg": ("train", "happy"), "train/angry/2.jpg": ("train", "anger"),
                   "test/neutral/3.jpg": ("test", "neutral")}
    b = tmp_path / "flat"
    write(b / "4/x.jpg", face_jpeg())
    write(b / "1/y.jpg", face_jpeg("surprise"))
    plan = plan_of("folder", str(b), label_map="rafdb")
    assert {r["source_ref"]: (r["split"], r["label_name"]) for r in plan.records} == {
        "1/y.jpg": ("", "surprise"), "4/x.jpg": ("", "happy")}
    # without a split, the pool assigns one by content hash
    rows = run_stage(plan.records, plan.classes)
    assert {r["split"] for r in rows} == {"train"}


def test_csv_list(tmp_path):
    write(tmp_path / "imgs/a.jpg", face_jpeg())
    write(tmp_path / "imgs/b.jpg", face_jpeg("sad"))
    write(tmp_path / "list.csv", "path,label,split\nimgs/a.jpg,happy,train\nimgs/b.jpg,2,valid\n"
          "imgs/c.jpg,happy,holdout\nimgs/d.jpg,bored,test\n")
    plan = plan_of("csv", str(tmp_path / "list.csv"), label_map="affectnet")
    r = by_ref(plan.records)
    assert (r["imgs/a.jpg"]["split"], r["imgs/a.jpg"]["label_name"]) == ("train", "happy")
    assert (r["imgs/b.jpg"]["split"], r["imgs/b.jpg"]["label_name"]) == ("val", "sad")
    assert r["imgs/c.jpg"]["reason"] == "unknown_split"
    assert r["imgs/d.jpg"]["reason"] == "unknown_label"
    assert r["imgs/a.jpg"]["path"] == str(tmp_path / "imgs/a.jpg")


def test_hf_save_to_disk_and_parquet(tmp_path):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(
        names=["angry", "happy", "neutral"])})
    imgs = [{"bytes": face_jpeg("anger"), "path": None}, {"bytes": face_jpeg("happy"), "path": None}]
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"image": imgs, "label": [0, 1]}, features=feats),
        "validation": datasets.Dataset.from_dict({"image": imgs[:1], "label": [2]}, features=feats)})
    dd.save_to_disk(str(tmp_path / "disk"))
    plan = plan_of("hf", str(tmp_path / "disk"))
    got = sorted((r["source_ref"], r["split"], r["label_name"]) for r in plan.records)
    assert got == [("train[0]", "train", "anger"), ("train[1]", "train", "happy"),
                   ("validation[0]", "val", "neutral")]
    assert all(r["data"] for r in plan.records)
    (tmp_path / "pq").mkdir()
    dd["train"].to_parquet(str(tmp_path / "pq" / "train-00000-of-00001.parquet"))
    plan = plan_of("hf", str(tmp_path / "pq"))
    assert [(r["split"], r["label_name"]) for r in plan.records] == [("train", "anger"), ("train", "happy")]
    rows = run_stage(plan.records, plan.classes, mode="skip")
    assert [(r["reason"], r["label"]) for r in rows] == [("", 6), ("", 1)]


def test_synthetic_source_plan():
    plan = plan_of("synthetic", per_class=5, seed=3)
    assert plan.classes == list(S.CANONICAL_CLASSES[:7])
    assert len(plan.records) == 35
    assert sum(r["split"] == "test" for r in plan.records) == 7  # 20 % of 5 per class
    assert json.loads(plan.records[0]["synth"])["seed"] == 3


# --- decoding rejects, in-process ---------------------------------------------------------------

def test_stage_decode_reasons(tmp_path):
    cases = {
        "empty.jpg": b"",
        "text.jpg": b"hello, not an image\n",
        "trunc.jpg": face_jpeg()[:400],
        "badpng.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
        "tiny.png": cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes(),
        "ok.jpg": face_jpeg(),
    }
    recs = []
    for name, data in cases.items():
        write(tmp_path / name, data)
        recs.append({**plan_of("csv", _one_csv(tmp_path, name)).records[0]})
    recs.append({**recs[-1], "path": str(tmp_path / "missing.jpg"), "source_ref": "missing.jpg"})
    rows = {r["source_ref"]: r for r in run_stage(recs, list(S.CANONICAL_CLASSES[:7]), mode="skip")}
    assert {k: v["reason"] for k, v in rows.items()} == {
        "empty.jpg": "empty_file", "text.jpg": "not_an_image", "trunc.jpg": "corrupt_image",
        "badpng.png": "corrupt_image", "tiny.png": "image_too_small", "ok.jpg": "",
        "missing.jpg": "unreadable"}
    assert "truncated" in rows["trunc.jpg"]["detail"]


def _one_csv(tmp_path, name: str) -> str:
    p = tmp_path / f"{name}.csv"
    p.write_text(f"{name},happy,train\n")
    return str(p)


# --- rows that name a path outside the input root -----------------------------------------------

SECRET = b"TOPSECRET not an image\n"


def _outside(tmp_path) -> tuple[str, str]:
    """A file beside the dataset (what `..` reaches) and its absolute path."""
    write(tmp_path / "secret.txt", SECRET)
    return "secret.txt", str(tmp_path / "secret.txt")


def _outside_reasons(plan) -> dict[str, str]:
    out = {r["source_ref"]: r["reason"] for r in plan.records}
    for r in plan.records:
        if r["reason"] == "outside_input":
            assert "--allow-outside-input" in r["detail"] and r["path"] == "" and r["data"] == b""
            assert "TOPSECRET" not in r["detail"]
    return out


def test_csv_rows_outside_the_root_are_rejected(tmp_path):
    name, absolute = _outside(tmp_path)
    root = tmp_path / "data"
    write(root / "imgs/a.jpg", face_jpeg())
    write(root / "list.csv", f"path,label\nimgs/a.jpg,happy\n../{name},happy\nimgs/../../{name},happy\n"
          f"{absolute},happy\ns3://other-bucket/x.jpg,happy\nfile://{absolute},happy\n"
          f"{root}/imgs/a.jpg,happy\nimgs/./sub/../a.jpg,happy\n")
    plan = plan_of("csv", str(root / "list.csv"))
    got = _outside_reasons(plan)
    assert got == {"imgs/a.jpg": "", f"../{name}": "outside_input", f"imgs/../../{name}": "outside_input",
                   absolute: "outside_input", "s3://other-bucket/x.jpg": "outside_input",
                   f"file://{absolute}": "outside_input", f"{root}/imgs/a.jpg": "",
                   "imgs/./sub/../a.jpg": ""}
    assert by_ref(plan.records)["imgs/./sub/../a.jpg"]["path"] == str(root / "imgs/a.jpg")
    # the flag restores the old reading of such rows
    allowed = plan_of("csv", str(root / "list.csv"), allow_outside_input=True)
    r = by_ref(allowed.records)
    assert all(not x["reason"] for x in allowed.records)
    assert r[f"../{name}"]["path"] == absolute and r["s3://other-bucket/x.jpg"]["path"] == "s3://other-bucket/x.jpg"


def test_rafdb_names_outside_the_root_are_rejected(tmp_path):
    _outside(tmp_path)
    root = tmp_path / "raf-basic"
    write(root / "EmoLabel/list_patition_label.txt",
          "train_00001.jpg 4\ntrain_/../../../../secret.txt 4\ntest_/../../../../../etc/passwd 1\n")
    write(root / "Image/aligned/train_00001_aligned.jpg", face_jpeg(size=100))
    got = _outside_reasons(plan_of("rafdb", str(root)))
    assert sorted(got.values()) == ["", "outside_input", "outside_input"]


def test_affectnet_rows_outside_the_root_are_rejected(tmp_path):
    name, absolute = _outside(tmp_path)
    v1 = tmp_path / "v1"
    write(v1 / "train_set/train_annotations_7class.txt", f"1.jpg 1\n../../../{name} 1\n../../../../etc/passwd 2\n")
    got = _outside_reasons(plan_of("affectnet", str(v1)))
    assert sorted(got.values()) == ["", "outside_input", "outside_input"]
    old = tmp_path / "csvlayout"
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression\n"
    write(old / "training.csv", header + f"5/a.jpg,0,0,9,9,,1\n../../{name},0,0,9,9,,1\n"
          f"{absolute},0,0,9,9,,1\ngs://bucket/x.jpg,0,0,9,9,,1\n")
    write(old / "Manually_Annotated_Images/5/a.jpg", face_jpeg())
    got = _outside_reasons(plan_of("affectnet", str(old)))
    assert sorted(got.values()) == ["", "outside_input", "outside_input", "outside_input"]


def test_ferplus_names_outside_the_root_are_rejected(tmp_path):
    _outside(tmp_path)
    root = tmp_path / "ferplus"
    write(root / "fer2013new.csv", FERPLUS_HEADER + "Training,fer0000000.png,0,10,0,0,0,0,0,0,0,0\n"
          "Training,../../secret.txt,0,10,0,0,0,0,0,0,0,0\n")
    write(root / "FER2013Train/fer0000000.png", face_jpeg(size=48))
    got = _outside_reasons(plan_of("ferplus", str(root)))
    assert sorted(got.values()) == ["", "outside_input"]


def test_hf_paths_outside_the_root_are_rejected(tmp_path):
    name, absolute = _outside(tmp_path)
    root = tmp_path / "hf"
    write(root / "imgs/a.jpg", face_jpeg())
    table = pa.table({"image": [{"bytes": None, "path": "imgs/a.jpg"}, {"bytes": None, "path": f"../{name}"},
                                {"bytes": None, "path": absolute}, {"bytes": None, "path": "s3://b/x.jpg"}],
                      "label": ["happy"] * 4})
    import pyarrow.parquet as pq

    pq.write_table(table, str(root / "train-00000.parquet"))
    got = _outside_reasons(plan_of("hf", str(root)))
    assert got == {"train[0]": "", "train[1]": "outside_input", "train[2]": "outside_input",
                   "train[3]": "outside_input"}


def test_ingest_options_are_checked_and_normalised_in_one_place():
    """IngestOptions refuses bad or contradictory options at construction, naming the flag, and
    every CLI flag lands in the field of the same name."""
    from dataclasses import fields

    from pipeline.ingest.cli import build_parser, options_of

    for bad, needle in [({"batch_size": 0}, "--batch-size must be an integer >= 1, got 0"),
                        ({"jpeg_quality": 101}, "--jpeg-quality"), ({"margin": float("nan")}, "--margin"),
                        ({"test_fraction": 1.0}, "--test-fraction"), ({"max_reject_fraction": 1.5}, "--max-reject"),
                        ({"group_regex": "("}, "not a valid regular expression"),
                        ({"keep_framing": True, "detect": True}, "exclude each other"),
                        ({"border": "wavy"}, "--border 'wavy'"), ({"keep_framing": "webcam"}, "unknown framing")]:
        with pytest.raises(ValueError, match=needle):
            IngestOptions("synthetic", "out", **bad)
    with pytest.raises(ValueError, match="--source folder needs --input"):
        IngestOptions("folder", "out")
    o = IngestOptions("folder", "out", "raw", class_names="happy,neutral", skip_detection=True)
    assert o.class_names == ("happy", "neutral") and o.keep_framing is True and o.mode == "skip"
    assert o.test_fraction == 0.0 and IngestOptions("synthetic", "out").test_fraction == 0.2
    assert o.recorded()["class_names"] == ["happy", "neutral"] and "workers" not in o.recorded()
    with pytest.raises(AttributeError):
        o.seed = 3  # frozen: what was checked is what runs

    parser = build_parser()
    dests = {a.dest for a in parser._actions} - {"help"}
    assert dests <= {f.name for f in fields(IngestOptions)}
    args = parser.parse_args(["--source", "csv", "-i", "l.csv", "-o", "x", "--class-names", "sad,fear",
                              "--keep-framing", "rafdb-aligned", "--rows-per-shard", "7", "--dedupe"])
    assert options_of(args) == IngestOptions("csv", "x", "l.csv", class_names=("sad", "fear"),
                                             keep_framing="rafdb-aligned", rows_per_shard=7, dedupe=True)
