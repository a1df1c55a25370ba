"""Ray-free proxy of bench/landmarks.py, for a box whose Ray is busy: the same task object
(``pipeline.pretrain.landmark_task``: model, augmentation, loss, NME) and POSTER-tiny at the smoke
profile's settings, driven by a bare torch loop in this process (not ``pipeline.train``).

    python bench/landmarks_local.py pretrain [--work runs/bench_landmarks_local] [--pretrain-epochs 8]
    python bench/landmarks_local.py poster [--sets muxspace,lab48] [--arms random-frozen,pretrained]
                                           [--seeds 0,1,2] [--epochs 10]

Faces: muxspace (LFW photos aligned in-process by ``FaceProcessor``, the ingest's detector and
framing) and lab48 (bench/lab_set.py's CK+-like 48 px faces, kept framing: the crop is the
image resized); each split 80/20 by person (hash of the person's name). Prints (a) landmark-
feature spread across held-out faces (random-frozen vs pretrained vs IR-50), (b) POSTER test
accuracy by person, random-frozen vs pretrained landmark net, per seed, (c) pretraining wall time.
"""
from __future__ import annotations

import argparse
import csv
import json
import hashlib
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from landmarks import SHARED, SMOKE_INPUT, feature_maps  # noqa: E402  (bench/landmarks.py)

MUXSPACE = SHARED / "data" / "muxspace_dev"


def _person_test(person: str) -> bool:
    return int(hashlib.sha256(person.encode()).hexdigest()[:8], 16) / 16**8 < 0.2


def load_muxspace(cache: Path) -> dict[str, np.ndarray]:
    if cache.exists():
        return dict(np.load(cache))
    from PIL import Image

    from pipeline.faces.align import FaceProcessor

    proc, rows = FaceProcessor(), []
    with open(MUXSPACE / "labels.csv") as f:
        for r in csv.DictReader(f):
            if r["label"] not in ("happy", "neutral"):
                continue
            try:
                face = proc.process(np.asarray(Image.open(MUXSPACE / r["path"]).convert("RGB")))
            except Exception:  # no face: ingest rejects these too
                continue
            person = re.search(r"([^/]+)_[0-9]+[.][A-Za-z]+$", r["path"]).group(1)
            rows.append((face.image, face.crop, face.landmarks, int(r["label"] == "happy"), _person_test(person)))
    out = {k: np.stack([r[i] for r in rows]) for i, k in enumerate(("image", "crop", "points", "label", "test"))}
    np.savez(cache, **out)
    return out


def load_lab48(work: Path) -> dict[str, np.ndarray]:
    import lab_set  # bench/lab_set.py
    from PIL import Image

    folder = work / "lab48_raw"
    if not folder.is_dir():
        lab_set.write_lab_set(folder)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    rows = []
    for ci, c in enumerate(classes):
        for f in sorted((folder / c).glob("*.png")):
            person = re.search(lab_set.PERSON_REGEX, f.name).group(1)
            with Image.open(f) as im:
                rgb = im.convert("RGB")
                rows.append((np.asarray(rgb.resize((224, 224), Image.BILINEAR)),
                             np.asarray(rgb.resize((112, 112), Image.BILINEAR)), ci, _person_test(person)))
    return {k: np.stack([r[i] for r in rows]) for i, k in enumerate(("image", "crop", "label", "test"))}


def pretrain(faces: dict[str, np.ndarray], epochs: int, out: Path) -> dict:
    from pipeline.pretrain.export import save_weights_file
    from pipeline.pretrain.landmark_task import LandmarkTask
    from pipeline.pretrain.points import N_POINTS
    from pipeline.transforms import to_model_inputs

    task = LandmarkTask().configure(SimpleNamespace(hflip=0.5, crop_area_min=0.8, shift=0.05, rotation=15.0,
                                                    input_size=SMOKE_INPUT))
    tr, te = ~faces["test"], faces["test"]
    rows = {"image": faces["crop"][tr], "crop": faces["crop"][tr], "label": faces["points"][tr].reshape(-1, 2 * N_POINTS)}
    held = {"image": faces["crop"][te], "label": faces["points"][te].reshape(-1, 2 * N_POINTS)}
    pts = faces["points"][tr]
    stats = {"mean": pts.mean(0), "spread": np.maximum(pts.reshape(len(pts), -1).std(0), 1e-3)}
    torch.manual_seed(0)
    model, loss = task.build_model(stats), task.loss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    rng, t0, curve = np.random.default_rng(0), time.perf_counter(), []
    for _ in range(epochs):
        model.train()
        order = rng.permutation(len(rows["label"]))
        for s in range(0, len(order) - 15, 16):
            b = task.augment({k: v[order[s:s + 16]] for k, v in rows.items()}, rng)
            x, _ = to_model_inputs(b["image"], b["image"][:1])
            pred, _ = model(x)
            total, _ = loss(pred, pred, torch.from_numpy(b["label"]))
            opt.zero_grad()
            total.backward()
            opt.step()
        sched.step()
        model.eval()
        curve.append(task.metrics(task.eval_sums(model, held, "cpu"))["nme"])
        print(f"[pretrain] epoch {len(curve)} held-out NME {curve[-1]:.4f}", flush=True)
    wall = time.perf_counter() - t0
    sha = save_weights_file(task.export(model), out, {"task": "landmarks"})
    return {"seconds": wall, "epochs": epochs, "train_rows": int(tr.sum()), "heldout": task.metrics(
        task.eval_sums(model, held, "cpu")), "baseline": task.baseline(stats, held), "curve": curve, "sha256": sha}


def train_poster(faces: dict[str, np.ndarray], weights: str | None, seed: int, epochs: int) -> float:
    """POSTER-tiny at configs/smoke.yaml's model/optimiser settings; test accuracy on held-out people."""
    from pipeline.transforms import to_model_inputs
    from poster_model import LossMixture, load_pretrained, poster_tiny

    torch.manual_seed(seed)
    k = int(faces["label"].max()) + 1
    model = poster_tiny(k, input_size=SMOKE_INPUT)
    if weights:
        load_pretrained(model, mobilefacenet_path=weights)
    loss = LossMixture({"ce": 1.0, "lsce": 2.0}, label_smoothing=0.1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    tr, te = np.flatnonzero(~faces["test"]), np.flatnonzero(faces["test"])
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        model.train()
        for idx in np.array_split(rng.permutation(tr), max(1, len(tr) // 32)):
            flip = rng.random(len(idx)) < 0.5
            img = np.where(flip[:, None, None, None], faces["image"][idx][:, :, ::-1], faces["image"][idx])
            crop = np.where(flip[:, None, None, None], faces["crop"][idx][:, :, ::-1], faces["crop"][idx])
            x, c = to_model_inputs(img, crop)
            logits, feats = model(x, c)
            total, _ = loss(logits, feats, torch.from_numpy(faces["label"][idx].astype(np.int64)))
            opt.zero_grad()
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        preds = [model(*to_model_inputs(faces["image"][te[s:s + 64]], faces["crop"][te[s:s + 64]]))[0].argmax(1)
                 for s in range(0, len(te), 64)]
    return float((torch.cat(preds).numpy() == faces["label"][te]).mean())


def _record(work: Path, key: str, value) -> None:
    f = work / "results.json"
    res = json.loads(f.read_text()) if f.exists() else {}
    res[key] = value
    f.write_text(json.dumps(res, indent=1, default=float))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("pretrain", "poster"), help="pretrain (then (a)), or POSTER fits (b)")
    ap.add_argument("--work", default=str(REPO / "runs" / "bench_landmarks_local"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--pretrain-epochs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--sets", default="muxspace,lab48")
    ap.add_argument("--arms", default="random-frozen,pretrained")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    mux = load_muxspace(work / "muxspace.npz")
    print(f"muxspace: {len(mux['label'])} faces, {int(mux['test'].sum())} held-out ({time.perf_counter() - t0:.0f} s)")
    weights = work / "mobilefacenet_landmarks.pth"
    if args.stage == "pretrain":
        p = pretrain(mux, args.pretrain_epochs, weights)
        _record(work, "pretrain", p)
        print(f"(c) pretraining on {p['train_rows']} faces, {p['epochs']} epochs, {args.threads} threads: "
              f"{p['seconds']:.0f} s; held-out NME {p['heldout']['nme']:.4f} vs mean shape {p['baseline']['nme']:.4f}")
        for key in p["heldout"]:
            print(f"      {key:<10} {p['heldout'][key]:.4f}  baseline {p['baseline'][key]:.4f}")
        te = np.flatnonzero(mux["test"])[:64]
        feats = feature_maps(mux["image"][te], mux["crop"][te], str(weights))
        _record(work, "features", feats)
        for name, v in feats.items():
            print(f"(a) {name:<24} std across faces {v['std_across_faces']:.3g}   mean |x| {v['mean_abs']:.3g}")
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in args.sets.split(","):
        faces = mux if name == "muxspace" else load_lab48(work)
        for arm in args.arms.split(","):
            a = []
            for seed in seeds:
                t1 = time.perf_counter()
                a.append(train_poster(faces, str(weights) if arm == "pretrained" else None, seed, args.epochs))
                _record(work, f"fit/{name}/{arm}/{seed}", {"test_accuracy": a[-1], "epochs": args.epochs,
                                                          "seconds": time.perf_counter() - t1})
                print(f"[{name}] {arm} seed {seed}: {a[-1]:.3f} ({time.perf_counter() - t1:.0f} s)", flush=True)
            print(f"(b) {name:<9} {arm:<14} test acc by person: mean {np.mean(a):.3f} sd {np.std(a):.3f} "
                  f"({', '.join(f'{x:.3f}' for x in a)}; {int(faces['test'].sum())} test faces)", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
