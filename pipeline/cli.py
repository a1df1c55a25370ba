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
from typing import Callable


def _number(kind: type, text: str) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _ranged(kind: type, ok: Callable[[float], bool], what: str, doc: str) -> Callable[[str], float]:
    """An argparse type: `kind` parsed by ``_number``, refused unless ``ok(value)``."""
    def parse(text: str):
        v = kind(_number(kind, text))
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return v
    parse.__doc__ = doc
    return parse


positive_int = _ranged(int, lambda v: v >= 1, "an integer >= 1", "An integer >= 1 (batch sizes, counts, concurrency).")
non_negative_int = _ranged(int, lambda v: v >= 0, "an integer >= 0", "An integer >= 0.")
non_negative_float = _ranged(float, lambda v: v >= 0, "a finite number >= 0", "A finite number >= 0 (margins, CPU shares).")
positive_float = _ranged(float, lambda v: v > 0, "a finite number > 0", "A finite number > 0.")
fraction = _ranged(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)", "A share in [0, 1).")
fraction_closed = _ranged(float, lambda v: 0 <= v <= 1, "a fraction in [0, 1]", "A share in [0, 1].")


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
