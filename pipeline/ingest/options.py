"""`IngestOptions`: everything one ingest is asked to do, typed, with defaults, checked in one place.

One field per `python -m pipeline.ingest` flag (docs/ingest.md explains each); the CLI builds one
from its arguments, Python callers build one directly:

    from pipeline.ingest import IngestOptions, ingest
    report = ingest(IngestOptions("synthetic", "data/synth", per_class=40, seed=0))

Construction fails with a `ValueError` naming the flag when an option is out of range or two
options contradict each other, so `ingest()` only ever sees a consistent request. Checks that
need the input or the output (files exist, the output is free, the class names are known to the
source) stay in `ingest()`.
"""
from __future__ import annotations

import math
import re
from dataclasses import KW_ONLY, dataclass
from typing import Any, Callable

# The options recorded in the manifest's source.options, in this order (manifests compare as JSON).
RECORDED = ("classes", "class_names", "class_order", "label_map", "skip_detection", "detect",
            "keep_framing", "border", "margin", "rows_per_shard", "jpeg_quality",
            "max_reject_fraction", "dedupe", "test_fraction", "per_class", "seed", "limit",
            "group_regex", "allow_outside_input")


def _at_least(lo: float) -> Callable[[Any], bool]:
    return lambda v: math.isfinite(v) and v >= lo


# field -> (accepts the value, what it must be); None always passes (the field's "not given").
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "limit": (_at_least(1), "an integer >= 1"),
    "per_class": (_at_least(1), "an integer >= 1"),
    "workers": (_at_least(1), "an integer >= 1"),
    "batch_size": (_at_least(1), "an integer >= 1"),
    "rows_per_shard": (_at_least(1), "an integer >= 1"),
    "jpeg_quality": (lambda v: 1 <= v <= 100, "an integer in 1..100"),
    "margin": (lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "actor_cpus": (_at_least(0), "a finite number >= 0"),
    "test_fraction": (lambda v: 0 <= v < 1, "a fraction in [0, 1)"),
    "max_reject_fraction": (lambda v: 0 <= v <= 1, "a fraction in [0, 1]"),
}


@dataclass(frozen=True)
class IngestOptions:
    # input and output
    source: str                       # dataset layout of `input` (pipeline.ingest.sources.SOURCES)
    out: str                          # output folder (local path or URI)
    input: str | None = None          # dataset folder or file; synthetic needs none
    _: KW_ONLY
    overwrite: bool = False           # replace an earlier ingest output (only on success)
    limit: int | None = None          # only the first N inputs
    allow_outside_input: bool = False  # read files a list names outside `input`
    # labels
    classes: int | None = None        # 7 or 8; None: the source's own
    class_names: tuple[str, ...] | None = None  # explicit subset ("happy,neutral" or a sequence)
    class_order: str = "official"     # official | canonical
    label_map: str | None = None      # raw label -> name (a preset name or '1=surprise,...')
    image_column: str | None = None   # hf
    label_column: str | None = None   # hf
    # faces
    keep_framing: bool | str = False  # keep the dataset's crop: True, or a framing name
    skip_detection: bool = False      # deprecated alias of keep_framing=True
    border: str = "replicate"         # fill beyond the source image
    detect: bool = False              # run the detector even where landmarks are known
    margin: float = 0.8               # alignment template scale
    jpeg_quality: int = 95
    # splits and rejects
    test_fraction: float | None = None  # None: the source's default (synthetic 0.2, others 0)
    group_regex: str | None = None    # person/sequence from source_ref, kept out of both splits
    dedupe: bool = False              # also drop duplicates within a split
    max_reject_fraction: float = 0.2  # fail above this share of (non-protocol) rejects
    # synthetic (seed also orders every source's rows)
    per_class: int = 40
    seed: int = 0
    # scale
    workers: int | None = None        # face actors; None: the cluster's CPU count
    actor_cpus: float = 0.5
    batch_size: int = 16
    rows_per_shard: int = 1000
    progress: bool | None = None      # None: a progress bar on a terminal unless TQDM_DISABLE

    def __post_init__(self) -> None:
        if isinstance(self.class_names, str):
            self._set("class_names", tuple(self.class_names.split(",")) if self.class_names else None)
        elif self.class_names is not None:
            self._set("class_names", tuple(self.class_names))
        if self.group_regex:
            try:
                re.compile(self.group_regex)
            except re.error as e:
                raise ValueError(f"--group-regex {self.group_regex!r} is not a valid regular expression: {e}") from None
        if self.skip_detection:  # the old name of --keep-framing (ingest() logs the deprecation)
            self._set("keep_framing", self.keep_framing or True)
        if self.keep_framing and self.detect:
            raise ValueError("--keep-framing (--skip-detection) and --detect exclude each other")
        self.framing()  # refuses an unknown --border or framing name
        if self.source != "synthetic" and not self.input:
            raise ValueError(f"--source {self.source} needs --input")
        if self.test_fraction is None:
            self._set("test_fraction", 0.2 if self.source == "synthetic" else 0.0)
        for name, (ok, what) in _RANGES.items():
            value = getattr(self, name)
            if value is not None and not ok(value):
                raise ValueError(f"--{name.replace('_', '-')} must be {what}, got {value!r}")

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # normalising in __post_init__ of a frozen dataclass

    @property
    def mode(self) -> str:
        """How faces are found: `skip` (keep the framing), `detect` (always), `auto` (where unknown)."""
        return "skip" if self.keep_framing else "detect" if self.detect else "auto"

    def framing(self):
        """The manifest's framing: the dataset's own (`keep_framing`, a name or True), else the project's."""
        from pipeline.faces import framing as FR

        if self.border not in FR.BORDERS:
            raise ValueError(f"--border {self.border!r}: choose from {FR.BORDERS}")
        if self.keep_framing:
            return FR.kept_framing(self.source, self.keep_framing if isinstance(self.keep_framing, str) else None)
        return FR.project(self.margin, self.border)

    def recorded(self) -> dict[str, Any]:
        """The options the manifest records under source.options (the scale knobs are left out)."""
        out = {k: getattr(self, k) for k in RECORDED}
        if out["class_names"] is not None:
            out["class_names"] = list(out["class_names"])
        return out
