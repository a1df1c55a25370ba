"""bench/model_step.py's code path on CPU (tiny settings): rows for both step kinds, FLOPs and MFU
consistent with the timings, the JSON written. Not a timing test."""
from __future__ import annotations

import json

import pytest

from bench_scripts import load_bench


def test_matrix_rows_on_cpu(tmp_path):
    bench = load_bench("model_step")
    out = tmp_path / "rows.json"
    rows = bench.main(["--variant", "tiny", "--models", "poster", "--batches", "2", "--steps", "plain,sam",
                       "--precisions", "fp32,bf16", "--optimizers", "foreach", "--iters", "1",
                       "--warmup", "0", "--peak-tflops", "1", "--json", str(out)])
    assert [(r["precision"], r["step"]) for r in rows] == [
        ("fp32", "plain"), ("fp32", "sam"), ("bf16", "plain"), ("bf16", "sam")]
    blob = json.loads(out.read_text())
    flops = blob["header"]["gflops_per_image_fwd_bwd"]["poster"] * 1e9
    assert flops > 1e8  # POSTER-tiny: about 1.2 GFLOP per image, forward + backward
    for r in rows:
        assert r["status"] == "ok" and r["img_s"] > 0
        passes = 2 if r["step"] == "sam" else 1
        assert r["model_tflops"] == pytest.approx(flops * passes * r["img_s"] / 1e12)
        assert r["mfu"] == pytest.approx(r["model_tflops"] / 1.0)
    assert len(blob["rows"]) == 4


def test_budget_skips_the_rest(tmp_path):
    bench = load_bench("model_step")
    rows = bench.main(["--variant", "tiny", "--models", "poster", "--batches", "2", "--iters", "1",
                       "--warmup", "0", "--peak-tflops", "1", "--budget-s", "1e-9"])
    assert rows and all(r["status"] == "skipped (budget)" for r in rows)
