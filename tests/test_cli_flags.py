"""Every numeric flag of every CLI is range-checked at parse time (issue 31, item 3).

The walk imports each CLI's parser builder, visits every option (subcommands included) and:
- fails when a numeric option (``type=int``/``float``, or a numeric default with no type) has no
  range-checking type from ``pipeline.cli`` and no ``choices``: a new flag cannot skip the check;
- feeds each value its type declares bad (0, negatives, out of range, NaN, text) and expects
  argparse's exit 2 with one ``error:`` line naming the flag.
No Ray, no MLflow: parsers only.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# module -> the function that builds its parser (one per `python -m pipeline.<verb>`)
BUILDERS = {
    "pipeline.ingest.cli": "build_parser",
    "pipeline.train.cli": "build_parser",
    "pipeline.tune.cli": "build_parser",
    "pipeline.evaluate.cli": "build_parser",
    "pipeline.registry.cli": "build_parser",
    "pipeline.predict.cli": "build_parser",
    "pipeline.synth.cli": "build_parser",
    "pipeline.demo.__main__": "build_parser",
    "pipeline.pretrain.cli": "build_parser",
}


def _walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(argv prefix that selects the (sub)parser, action) for every option, subcommands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, prefix + (name,))
        elif action.option_strings:
            yield prefix, action


def _numeric(action: argparse.Action) -> bool:
    if action.type in (int, float):
        return True
    d = action.default
    return action.type is None and isinstance(d, (int, float)) and not isinstance(d, bool) and action.nargs != 0


def _options():
    for mod, fn in BUILDERS.items():
        parser = getattr(importlib.import_module(mod), fn)()
        for prefix, action in _walk(parser):
            yield mod, fn, prefix, action


def test_every_cli_module_is_walked():
    """A new CLI (a module building an ArgumentParser under pipeline/) must be listed in BUILDERS."""
    found = set()
    for path in (REPO / "pipeline").rglob("*.py"):
        if "ArgumentParser(" in path.read_text():
            found.add(".".join(path.relative_to(REPO).with_suffix("").parts))
    assert found - set(BUILDERS) == set(), f"CLI modules the flag walk does not cover: {found - set(BUILDERS)}"


def test_every_numeric_flag_has_a_range_check():
    unchecked = []
    for mod, _, prefix, action in _options():
        if action.choices is not None:
            continue  # an explicit list of allowed values is a range
        checked = getattr(action.type, "bad_values", None) is not None
        if _numeric(action) and not checked:
            unchecked.append(f"{mod} {' '.join(prefix)} {action.option_strings[0]}")
        elif action.type not in (None, str) and not checked:
            unchecked.append(f"{mod} {' '.join(prefix)} {action.option_strings[0]} (type {action.type!r} "
                             "is not a pipeline.cli range type)")
    assert not unchecked, "flags without a parse-time range check: " + "; ".join(unchecked)


def _cases():
    for mod, fn, prefix, action in _options():
        for bad in getattr(action.type, "bad_values", ()) or ():
            yield pytest.param(mod, fn, prefix, action.option_strings[-1], bad,
                               id=f"{mod.split('.')[1]}{'-' + '-'.join(prefix) if prefix else ''}"
                                  f"{action.option_strings[-1]}={bad}")


CASES = list(_cases())


def test_the_walk_covers_the_flags_the_issue_names():
    seen = {(m.split(".")[1], flag) for m, _, _, flag, _ in (c.values for c in CASES)}
    for want in [("predict", "--batch-size"), ("predict", "--actors"), ("predict", "--cpus-per-actor"),
                 ("synth", "--per-class"), ("synth", "--test-fraction"), ("ingest", "--jpeg-quality"),
                 ("tune", "--max-failures"), ("registry", "--margin"), ("evaluate", "--batch-size")]:
        assert want in seen, want


@pytest.mark.parametrize("mod,fn,prefix,flag,bad", CASES)
def test_bad_value_is_refused_at_parse_time(mod, fn, prefix, flag, bad):
    parser = getattr(importlib.import_module(mod), fn)()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        parser.parse_args([*prefix, f"{flag}={bad}"])
    assert exc.value.code == 2
    last = err.getvalue().strip().splitlines()[-1]
    # one line: "<prog>: error: argument --flag: must be <range>, got <value>"
    assert re.search(rf"error: argument [^:]*{re.escape(flag)}", last), last
    assert "must be" in last or "is not" in last, last


def test_good_values_still_parse():
    from pipeline.predict.cli import parse_args as predict_args
    from pipeline.synth.cli import build_parser as synth

    a = predict_args(["--input-dir", "d", "--out", "o.parquet", "--batch-size", "1", "--actors", "1",
                      "--cpus-per-actor", "0.25"])
    assert (a.batch_size, a.actors, a.cpus_per_actor) == (1, 1, 0.25)
    s = synth().parse_args(["--out", "x", "--per-class", "1", "--test-fraction", "0"])
    assert (s.per_class, s.test_fraction) == (1, 0.0)


@pytest.mark.parametrize("mod,argv", [
    ("pipeline.synth.cli", ["--out", "{file}/sub"]),
    ("pipeline.ingest.cli", ["--source", "synthetic", "--out", "{file}/sub"]),
    ("pipeline.evaluate.cli", ["--model", "m", "--shards", "s", "--out", "{file}/sub"]),
    ("pipeline.predict.cli", ["--input-dir", "d", "--out", "{file}/sub/p.parquet"]),
    ("pipeline.predict.cli", ["--input-dir", "d", "--out", "{dir}"]),
    ("pipeline.demo.__main__", ["--out", "{file}"]),
    ("pipeline.registry.cli", ["review", "--shards", "s", "--out", "{file}/x"]),
])
def test_output_paths_that_cannot_be_written_are_refused(tmp_path, mod, argv):
    f = tmp_path / "file.txt"
    f.write_text("x")
    argv = [a.replace("{file}", str(f)).replace("{dir}", str(tmp_path)) for a in argv]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        importlib.import_module(mod).build_parser().parse_args(argv)
    assert exc.value.code == 2
    last = err.getvalue().strip().splitlines()[-1]
    assert "argument --out" in last and ("is a file" in last or "is a folder" in last), last
