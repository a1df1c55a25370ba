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


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, counts, concurrency)."""
    v = int(_number(int, text))
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return v


def non_negative_int(text: str) -> int:
    v = int(_number(int, text))
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return v


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (margins, CPU shares)."""
    v = float(_number(float, text))
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def positive_float(text: str) -> float:
    v = float(_number(float, text))
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def fraction(text: str) -> float:
    """A share in [0, 1)."""
    v = float(_number(float, text))
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), got {text}")
    return v


def fraction_closed(text: str) -> float:
    """A share in [0, 1]."""
    v = float(_number(float, text))
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text}")
    return v


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
