"""bench/profile_seeds.py's code path (one seed, one epoch, on the session's generated shards):
the pipeline's val carve is left out of the train rows, and a test accuracy per epoch comes out.
Not a learning test: tests/test_train.py and bench/learning.py are."""
from __future__ import annotations

import json
import re

from bench_scripts import load_bench


def test_one_seed_one_epoch_on_generated_shards(synthetic_shards, capsys):
    bench = load_bench("profile_seeds")
    assert bench.main(["--shards", str(synthetic_shards), "--seeds", "0", "schedule.epochs=1"]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((synthetic_shards / "_manifest.json").read_text())
    train_rows, test_rows = (int(x) for x in re.search(r"(\d+) train / (\d+) test rows", out).groups())
    assert test_rows == sum(manifest["counts"]["test"].values())
    assert 0.7 * manifest["totals"]["train"] < train_rows < manifest["totals"]["train"]  # smoke.yaml carves 0.15
    per_epoch = re.search(r"seed 0: test ([0-9.]+) \(per epoch ([0-9. ]+)\)", out)
    assert per_epoch and float(per_epoch.group(1)) == float(per_epoch.group(2).split()[-1])
    assert 0.0 <= float(per_epoch.group(1)) <= 1.0


def test_mirror_averaged_score_is_reported_beside_the_plain_one(synthetic_shards, capsys):
    bench = load_bench("profile_seeds")
    assert bench.main(["--shards", str(synthetic_shards), "--seeds", "0", "--flip-test", "schedule.epochs=1"]) == 0
    out = capsys.readouterr().out
    got = re.search(r"seed 0: test ([0-9.]+) mirror-averaged ([0-9.]+) \(per epoch ([0-9. ]+)\)", out)
    assert got and float(got.group(1)) == float(got.group(3).split()[-1])
    assert 0.0 <= float(got.group(2)) <= 1.0
    assert re.search(r"mean test [0-9.]+ sd [0-9.]+, mirror-averaged [0-9.]+ over 1 seeds", out)

