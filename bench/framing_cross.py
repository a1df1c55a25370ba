"""Cross-dataset framing figure and border-policy measurements on real faces (issue 16).

    python bench/framing_cross.py [--data ../shared/data/muxspace_dev] [--out runs/bench/framing_cross]
        [--epochs 8] [--borders-only] [--limit N]

Only one real set exists here (muxspace_dev: LFW photos, happy vs neutral), so the cross-dataset
setting is a proxy. The people are split in two by a hash of the name (``Person_Name_0001.jpg``):
set A becomes a "dataset-aligned" copy (tight 100x100 crops, the RAF-DB aligned framing), set B
stays raw photos. A is ingested three ways — default re-alignment with the detector
(``project``), ``--keep-framing`` (``dataset-crop``: no detector recipe, predict falls back to
the project framing with a warning), ``--keep-framing rafdb-aligned`` (predict reproduces the
crop) — the CPU profile (configs/smoke.yaml) trains on each, and B's raw photos go through
``pipeline.predict``. ``framing_cross()`` is the function ``bench/learning.py`` calls.

``border_policies()`` measures the fill of pixels beyond the source image when A's 100 px crops
are re-aligned to the project framing: share of the frame outside the source, the detector's hit
rate on the re-aligned faces, and a linear probe (logistic regression on 32x32 grey pixels)
trained on re-aligned A and tested on project-aligned B photos.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO.parent / "shared" / "data" / "muxspace_dev"
CLASSES = ["happy", "neutral"]
INGESTS = {  # figure row -> ingest options
    "project (default re-alignment)": {},
    "dataset-crop (--keep-framing)": {"keep_framing": True},
    "rafdb-aligned (--keep-framing rafdb-aligned)": {"keep_framing": "rafdb-aligned"},
}


def person(path: str) -> str:
    """``images/happy/Chen_Kaige_0001.jpg`` → ``Chen_Kaige``."""
    return Path(path).stem.rsplit("_", 1)[0]


def split_by_person(data: Path, limit: int | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(set A, set B) of (absolute path, label); a person is in exactly one set."""
    with open(data / "labels.csv") as f:
        rows = [(str(data / r["path"]), r["label"]) for r in csv.DictReader(f)]
    rows = rows[::max(1, len(rows) // limit)][:limit] if limit else rows  # labels.csv is sorted by class
    a = [r for r in rows if int(hashlib.sha1(person(r[0]).encode()).hexdigest()[:8], 16) % 2 == 0]
    b = [r for r in rows if r not in a]
    return a, b


def make_dataset_aligned(rows, out: Path, processor) -> dict[str, int]:
    """Write set A as a RAF-DB-like folder tree of 100x100 tight aligned crops (``<label>/*.jpg``)."""
    from pipeline.faces import framing as FR
    from pipeline.faces.align import NoFaceError
    from pipeline.predict import read_rgb

    spec = FR.RAFDB_ALIGNED
    done = {"written": 0, "no_face": 0}
    for path, label in rows:
        rgb = read_rgb(path)
        try:
            lm68, five = processor.detect68(rgb)
        except NoFaceError:
            done["no_face"] += 1
            continue
        crop = cv2.warpAffine(rgb, FR.transform(spec, lm68, five), (spec.size, spec.size),
                              flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
        (out / label).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / label / Path(path).name), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 92])
        done["written"] += 1
    return done


def _probe_features(img: np.ndarray) -> np.ndarray:
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return cv2.resize(g, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32).ravel() / 255.0


def border_policies(crops: Path, rows_b, processor) -> dict[str, dict[str, float]]:
    """Per border policy: outside share, detector hit rate on re-aligned crops, probe A→B accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.faces import framing as FR
    from pipeline.faces.align import NoFaceError
    from pipeline.predict import read_rgb

    items = [(p, p.parent.name) for p in sorted(crops.glob("*/*.jpg"))]
    xb, yb = [], []
    for path, label in rows_b:  # B through the predict framing (project), photo borders real
        try:
            xb.append(_probe_features(FR.prepare_face(read_rgb(path), FR.PROJECT, processor).image))
            yb.append(CLASSES.index(label))
        except NoFaceError:
            continue
    dets = []  # detect once per crop; only the fill differs between policies
    for path, label in items:
        rgb = read_rgb(path)
        try:
            dets.append((rgb, *processor.detect68(rgb), label))
        except NoFaceError:
            continue
    out = {}
    for border in FR.BORDERS:
        spec = FR.PROJECT.with_(border=border)
        hits, outside, xa, ya = 0, [], [], []
        for rgb, lm68, five, label in dets:
            face = FR.apply(rgb, lm68, five, spec)
            m = FR.transform(spec, lm68, five)
            mask = cv2.warpAffine(np.ones(rgb.shape[:2], np.uint8), m, (224, 224), flags=cv2.INTER_NEAREST)
            outside.append(1.0 - mask.mean())
            try:  # does the re-aligned face still look like a face to the detector?
                processor.detect68(face.image)
                hits += 1
            except NoFaceError:
                pass
            xa.append(_probe_features(face.image))
            ya.append(CLASSES.index(label))
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
        clf.fit(np.stack(xa), ya)
        out[border] = {"crops": len(items), "realigned": len(xa), "no_face_on_crop": len(items) - len(dets),
                       "outside_fraction": float(np.mean(outside)),
                       "detector_hit_rate_on_realigned": hits / max(1, len(xa)),
                       "probe_acc_A_to_B": float(clf.score(np.stack(xb), yb)), "B_photos": len(yb)}
    return out


def probe_cross(crops: Path, rows_b, processor) -> dict[str, dict[str, float]]:
    """The cross-dataset figure with a linear probe instead of POSTER (seconds, no Ray).

    Set A's crops are stored as each ingest stores them (re-aligned, or kept and resized), set B's
    photos are cut by ``prepare_face`` in the framing predict uses for that model; a logistic
    regression on 32x32 grey pixels is fitted on A and scored on B (and by 5-fold CV on A).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pipeline.faces import framing as FR
    from pipeline.faces.align import NoFaceError, aligned_only
    from pipeline.predict import read_rgb

    a = {"project": ([], []), "kept": ([], [])}
    for path in sorted(crops.glob("*/*.jpg")):
        rgb, y = read_rgb(path), CLASSES.index(path.parent.name)
        a["kept"][0].append(_probe_features(aligned_only(rgb).image))
        a["kept"][1].append(y)
        try:
            a["project"][0].append(_probe_features(processor.process(rgb).image))
            a["project"][1].append(y)
        except NoFaceError:
            pass
    b = {"project": ([], []), "rafdb-aligned": ([], [])}
    for path, label in rows_b:
        rgb = read_rgb(path)
        for name in b:
            try:
                b[name][0].append(_probe_features(FR.prepare_face(rgb, FR.get(name), processor).image))
                b[name][1].append(CLASSES.index(label))
            except NoFaceError:
                pass
    rows = {"project (default re-alignment)": ("project", "project"),
            "dataset-crop (--keep-framing)": ("kept", "project"),
            "rafdb-aligned (--keep-framing rafdb-aligned)": ("kept", "rafdb-aligned")}
    out = {}
    for row, (ak, bk) in rows.items():
        xa, ya = np.stack(a[ak][0]), np.asarray(a[ak][1])
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
        own = float(cross_val_score(clf, xa, ya, cv=5).mean())
        clf.fit(xa, ya)
        out[row] = {"A_rows": len(ya), "A_cv_acc": own, "B_framing": bk, "B_photos": len(b[bk][1]),
                    "B_acc": float(clf.score(np.stack(b[bk][0]), b[bk][1]))}
    return out


def _train_and_predict(shards: Path, rows_b, work: Path, epochs: int, name: str) -> dict[str, float]:
    from pipeline.config import load_config
    from pipeline.artifact.load import load_model
    from pipeline.faces.framing import FramingWarning
    from pipeline.predict import predict_files
    from pipeline.train import open_run, run_training

    import shutil

    shutil.rmtree(work, ignore_errors=True)  # same run name + storage would resume an old fit
    cfg = load_config(REPO / "configs" / "smoke.yaml", [
        f"data.shards={shards}", f"run.name=framing-{name}", f"run.storage_path={work / 'ray'}",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}", f"schedule.epochs={epochs}",
        "tracking.log_model=false"])
    t0 = time.perf_counter()
    out = run_training(open_run(cfg), cfg)
    loaded = load_model(out.checkpoint_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        preds = predict_files([p for p, _ in rows_b], loaded=loaded)
    ok = [(p, lab) for p, (_, lab) in zip(preds, rows_b) if p.ok]
    acc = sum(p.label == lab for p, lab in ok) / max(1, len(ok))
    return {"framing_trained": loaded.extra.get("framing", {}).get("name", "?"),
            "framing_predicted": preds[0].framing if preds else "?",
            "warned": any(issubclass(w.category, FramingWarning) for w in caught),
            "test_acc_own": float(out.metrics.get("test_accuracy", float("nan"))),
            "B_answered": len(ok), "B_photos": len(rows_b), "B_acc_predict": acc,
            "B_pred_happy_share": sum(p.label == "happy" for p, _ in ok) / max(1, len(ok)),
            "seconds": time.perf_counter() - t0}


def _shuffled_list(crops: Path) -> Path:
    """``path,label`` in a seeded random order: the shard rows then mix the classes (a folder tree
    is read class by class, and training shuffles files, not rows)."""
    items = sorted(crops.glob("*/*.jpg"))
    np.random.default_rng(0).shuffle(items)
    out = crops / "list.csv"
    out.write_text("".join(f"{p.relative_to(crops)},{p.parent.name}\n" for p in items))
    return out


def _ray() -> None:
    """One small local Ray for the three ingests and fits (ingest leaves a running Ray alone)."""
    from pipeline.runtime import ensure_ray

    ensure_ray(2, object_store_memory=512 * 1024**2, log_to_driver=False)  # token auth stays on


def framing_cross(data: Path = DEFAULT_DATA, out: Path = REPO / "runs" / "bench" / "framing_cross",
                  epochs: int = 8, limit: int | None = None, borders: bool = True,
                  train: bool = True) -> dict:
    """The figure: per framing, own test accuracy and accuracy on set B's raw photos via predict."""
    from pipeline.faces.align import FaceProcessor
    from pipeline.ingest import IngestOptions, ingest

    out = Path(out).resolve()  # Ray Train storage must be absolute
    rows_a, rows_b = split_by_person(Path(data), limit)
    crops = out / "A_aligned100"
    proc = FaceProcessor()
    try:
        made = make_dataset_aligned(rows_a, crops, proc) if not crops.is_dir() else {"written": "reused"}
        result = {"A_photos": len(rows_a), "B_photos": len(rows_b), "A_crops": made}
        if borders:
            result["borders"] = border_policies(crops, rows_b, proc)
            result["probe_cross"] = probe_cross(crops, rows_b, proc)
    finally:
        proc.close()
    if train:
        _ray()
        result["cross"] = {}
        for row, opts in INGESTS.items():
            tag = row.split(" ")[0]
            shards = out / f"shards-{tag}"
            rep = ingest(IngestOptions("csv", str(shards), str(_shuffled_list(crops)), class_names=CLASSES,
                                       test_fraction=0.2, overwrite=True, progress=False, **opts))
            fig = _train_and_predict(shards, rows_b, out / f"train-{tag}", epochs, tag)
            fig["ingest_rejected"] = rep.rejected
            result["cross"][row] = fig
            print(f"[framing_cross] {row}: {json.dumps(fig)}", flush=True)
    return result


def format_table(result: dict) -> str:
    """The figure as a markdown table (one row per framing, then the border measurements)."""
    lines = []
    if "cross" in result:
        lines += ["| training framing (ingest of set A crops) | test acc. on A | set B photos via predict "
                  "| framing predict used | B predicted happy |", "|---|---|---|---|---|"]
        for row, f in result["cross"].items():
            lines.append(f"| {row} | {f['test_acc_own']:.3f} | **{f['B_acc_predict']:.3f}** "
                         f"({f['B_answered']}/{f['B_photos']}) | {f['framing_predicted']}"
                         f"{' (warned)' if f['warned'] else ''} | {f['B_pred_happy_share']:.2f} |")
    if "probe_cross" in result:
        lines += ["", "| probe (logistic regression, 32x32 grey) | CV acc. on A | set B photos | B cut in |",
                  "|---|---|---|---|"]
        for row, f in result["probe_cross"].items():
            lines.append(f"| {row} | {f['A_cv_acc']:.3f} | **{f['B_acc']:.3f}** ({f['B_photos']}) | {f['B_framing']} |")
    if "borders" in result:
        lines += ["", "| border | outside share | detector on re-aligned | probe A → B |", "|---|---|---|---|"]
        for b, m in result["borders"].items():
            lines.append(f"| {b} | {m['outside_fraction']:.2f} | {m['detector_hit_rate_on_realigned']:.3f} "
                         f"| {m['probe_acc_A_to_B']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(REPO / "runs" / "bench" / "framing_cross"))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--borders-only", action="store_true")
    ap.add_argument("--no-borders", action="store_true")
    args = ap.parse_args(argv)
    res = framing_cross(Path(args.data), Path(args.out), args.epochs, args.limit,
                        borders=not args.no_borders, train=not args.borders_only)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "result.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    print(format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
