"""Every CLI refuses bad flags and missing inputs with one clear stderr line and a non-zero exit,
never a traceback (issue 14, item 6). Each case runs the real ``python -m pipeline.<verb>`` as a
subprocess; none of them gets far enough to start Ray."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MISSING = "/nonexistent/poster-shards"

CASES = [
    # (argv, exit code, text the message must contain)
    (["pipeline.ingest", "--source", "synthetic", "--out", "{tmp}/o", "--batch-size", "0"], 2, "--batch-size"),
    (["pipeline.ingest", "--source", "synthetic", "--out", "{tmp}/o", "--limit", "-5"], 2, "--limit"),
    (["pipeline.ingest", "--source", "synthetic", "--out", "{tmp}/o", "--test-fraction", "1.5"], 2, "--test-fraction"),
    (["pipeline.ingest", "--source", "synthetic", "--out", "{tmp}/o", "--margin", "nan"], 2, "--margin"),
    (["pipeline.ingest", "--source", "folder", "--input", MISSING, "--out", "{tmp}/o"], 2, MISSING),
    (["pipeline.train", f"data.shards={MISSING}"], 2, "no _manifest.json"),
    (["pipeline.train", "--bogus-flag"], 2, "unrecognized arguments"),
    (["pipeline.train", "optim.max_nonfinite_steps=0"], 2, "max_nonfinite_steps"),
    (["pipeline.tune", "--space", "tune_spaces/loss_mix.py", f"data.shards={MISSING}"], 2, "no _manifest.json"),
    (["pipeline.tune", "--space", "tune_spaces/loss_mix.py", "--max-concurrent", "0"], 2, "--max-concurrent"),
    (["pipeline.evaluate", "--model", "x.pt", "--shards", MISSING], 2, "no _manifest.json"),
    (["pipeline.evaluate", "--model", "x.pt", "--shards", MISSING, "--batch-size", "-1"], 2, "--batch-size"),
    (["pipeline.registry", "review", "--shards", MISSING, "--margin", "-0.5"], 2, "--margin"),
    (["pipeline.registry", "review", "--shards", MISSING, "--margin", "nan"], 2, "--margin"),
    (["pipeline.registry", "review", "--shards", MISSING, "--tracking-uri", "sqlite:///{tmp}/m.db"], 2, MISSING),
    (["pipeline.predict", "{tmp}/none.jpg", "--model", "{tmp}/none.pt"], 2, "cannot load model"),
    (["pipeline.demo", "--epochs", "0"], 2, "--epochs"),
    (["pipeline.predict", "--input-dir", "{tmp}", "--out", "{tmp}/p.parquet", "--batch-size", "0"], 2, "--batch-size"),
    (["pipeline.synth", "--out", "/dev/null/faces", "--per-class", "2"], 2, "not a folder"),
    (["pipeline.pretrain", "landmarks", "--shards", MISSING], 2, MISSING),
    (["pipeline.pretrain", "landmarks", "--shards", MISSING, "data.input_size=100"], 2, "data.input_size"),
]


def _run_case(argv: list[str], tmp: Path) -> subprocess.CompletedProcess:
    argv = [a.replace("{tmp}", str(tmp)) for a in argv]
    env = {**os.environ, "PYTHONPATH": str(REPO), "POSTER_RUNS_DIR": str(tmp / "runs")}
    env.pop("POSTER_DEBUG", None)
    return subprocess.run([sys.executable, "-m", *argv], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[int, tuple[subprocess.CompletedProcess, Path]]:
    """Every case's process, three at a time: each is a fresh interpreter that spends seconds
    importing torch/Ray/MLflow before it refuses (one after another: ~50 s of CI)."""
    tmps = {i: tmp_path_factory.mktemp(f"cli{i}") for i in range(len(CASES))}
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {i: pool.submit(_run_case, CASES[i][0], tmps[i]) for i in tmps}
        return {i: (f.result(), tmps[i]) for i, f in futures.items()}


@pytest.mark.parametrize("index", range(len(CASES)), ids=[" ".join(c[0][:2] + c[0][-2:]) for c in CASES])
def test_cli_refuses_bad_input_without_traceback(index, outcomes):
    p, tmp = outcomes[index]
    _, code, needle = CASES[index]
    needle = needle.replace("{tmp}", str(tmp))
    assert p.returncode == code, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr
    assert needle in p.stderr, p.stderr
    last = [ln for ln in p.stderr.splitlines() if ln.strip()][-1]
    assert "error" in last.lower(), last  # one closing line says what is wrong


def test_unexpected_exception_becomes_one_line(capsys):
    from pipeline.cli import run_cli

    def boom() -> int:
        raise RuntimeError("store unreachable\nsecond line")

    assert run_cli(boom) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: RuntimeError: store unreachable (POSTER_DEBUG=1 shows the traceback)"
