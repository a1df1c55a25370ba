"""Shared CLI plumbing: argparse range types and a guard that turns failures into one line.

Every ``python -m pipeline.<verb>`` ends with ``sys.exit(run_cli(main))``. Bad flags are refused by
argparse (exit 2, usage + one ``error:`` line); anything a command did not anticipate becomes one
``error:`` line on stderr and exit 1 instead of a traceback (``POSTER_DEBUG=1`` shows the traceback).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Callable


def _number(kind: type, text: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _ranged(kind: type, ok: Callable[[float], bool], what: str, doc: str,
            bad: tuple[str, ...]) -> Callable[[str], float]:
    """An argparse type: `kind` parsed by ``_number``, refused unless ``ok(value)``.

    ``bad`` lists values the type must refuse: tests/test_cli_flags.py feeds each one to every flag
    of this type, so a flag is only as checked as its type says."""
    def parse(text: str):
        v = kind(_number(kind, text))
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return v
    parse.__doc__ = doc
    parse.__name__ = what  # argparse names the type in "invalid <name> value" messages
    parse.bad_values = bad + ("nan", "x")  # type: ignore[attr-defined]
    return parse


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi] (no upper bound when ``hi`` is None)."""
    what = f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{hi}"
    bad = (str(lo - 1), str(lo - 10)) + (() if hi is None else (str(hi + 1),))
    return _ranged(int, lambda v: v >= lo and (hi is None or v <= hi), what, f"An integer, {what}.", bad)


positive_int = int_range(1)
non_negative_int = int_range(0)
seed = _ranged(int, lambda v: 0 <= v < 2**32, "an integer in 0..2**32-1", "A random seed (numpy's range).",
               ("-1", str(2**32)))
non_negative_float = _ranged(float, lambda v: v >= 0, "a finite number >= 0",
                             "A finite number >= 0 (margins, CPU shares).", ("-0.5", "inf", "-inf"))
positive_float = _ranged(float, lambda v: v > 0, "a finite number > 0", "A finite number > 0.",
                         ("0", "-1", "inf"))
fraction = _ranged(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)", "A share in [0, 1).",
                   ("-0.1", "1", "1.5", "inf"))
fraction_closed = _ranged(float, lambda v: 0 <= v <= 1, "a fraction in [0, 1]", "A share in [0, 1].",
                          ("-0.1", "1.01", "inf"))


def local_out(text: str) -> str:
    """An argparse type for an output folder: refused when it, or a folder above it, is an existing
    file (mkdir would fail deep inside the command with a traceback). URIs pass through."""
    if "://" in text:
        return text
    p = Path(text).expanduser()
    for q in (p, *p.parents):
        if q.exists():
            if not q.is_dir():
                raise argparse.ArgumentTypeError(f"{q} is a file, not a folder; choose another output path")
            break
    return text


def local_out_file(text: str) -> str:
    """An argparse type for an output file: refused when a folder above it is an existing file, or
    when it is an existing folder. URIs pass through."""
    if "://" in text:
        return text
    p = Path(text).expanduser()
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{p} is a folder; give a file path (e.g. {p / 'out.parquet'})")
    local_out(str(p.parent))
    return text


# these need a file on disk to fail: tests/test_cli_errors.py and test_cli_flags.py try them
local_out.bad_values = ()  # type: ignore[attr-defined]
local_out_file.bad_values = ()  # type: ignore[attr-defined]


def run_cli(main: Callable[[], int]) -> int:
    """Run ``main``; an unexpected exception becomes one clear line on stderr and exit 1."""
    try:
        return main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the commands handle the failures they expect; this is the backstop
        if os.environ.get("POSTER_DEBUG"):
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"error: {type(e).__name__}: {first} (POSTER_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
