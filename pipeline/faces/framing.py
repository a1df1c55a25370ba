"""Named face framings: how a face is cut out of a photo, from ingest to predict.

A model learns the framing of its training rows (where the eyes sit, how much forehead and chin,
what fills the pixels beyond the source image). Serving it on another framing costs accuracy, so
the framing travels with the data and the model: ingest writes it into the manifest, training
copies it into the weights' ``extra``, the MLflow tags and the model card, and ``pipeline.predict``
and the pyfunc rebuild it from raw photos with ``prepare_face``.

A framing with a *detector recipe* can be reproduced from any photo: detect the face mesh, then
either fit the five reference points to a template (``recipe="template"``) or take a square box
around the 68 points (``recipe="box"``). ``dataset-crop`` (a dataset's own crop of unknown
geometry, kept with ``pipeline.ingest --keep-framing``) has none; predict says so and falls back
to the project framing.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from pipeline.faces.geometry import (ALIGNED_SIZE, BORDERS, DEFAULT_BORDER, FramingError, box_region,  # noqa: F401
                                     finish_face, as_rgb, fill, similarity_transform, source_fill, template_5pts,
                                     transform_points, warp_face)

class FramingWarning(UserWarning):
    """Predict could not reproduce the model's framing and used another one."""


@dataclass(frozen=True)
class Framing:
    """One framing, as plain values (it is pickled to Ray actors and written to JSON).

    Attributes:
        name: registry key (``project``, ``rafdb-aligned``, ``affectnet-crop``, ``dataset-crop``).
        recipe: ``template`` (5-point similarity to the ArcFace template), ``box`` (axis-aligned
            square around the 68 points) or ``None`` (no detector recipe).
        margin: template: shrink factor of the template (1.0 = ArcFace's tight framing, smaller =
            more context); box: box side as a multiple of the larger side of the 68-point box.
        size: side of the dataset's own images; the face is cut at this size and then resized to
            the model's 224, so a framing of 100 px crops also has their resolution.
        border: how pixels outside the source image are filled (``BORDERS``).
    """

    name: str
    recipe: str | None = "template"
    margin: float = 0.8
    size: int = 224
    border: str = DEFAULT_BORDER
    description: str = ""

    @property
    def detector_recipe(self) -> bool:
        return self.recipe is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_(self, **kw: Any) -> "Framing":
        return dataclasses.replace(self, **kw)


def _project_text(margin: float) -> str:
    return ("pipeline.faces.align: MediaPipe face mesh, 5 points on a symmetric ArcFace template "
            f"scaled by {margin:g} (0.8: jaw and brows inside), eye line level, 224 px")


PROJECT = Framing("project", "template", 0.8, 224, DEFAULT_BORDER, _project_text(0.8))


def project(margin: float = PROJECT.margin, border: str = DEFAULT_BORDER) -> Framing:
    """The project framing at ingest's ``--margin`` / ``--border`` (the description says which)."""
    return PROJECT.with_(margin=margin, border=border, description=_project_text(margin))
# RAF-DB's aligned set: a 5-point similarity (eyes, nose, mouth corners) to 100x100. RAF-DB does
# not publish its template; the tight ArcFace template (margin 1.0) at 100 px is our stand-in.
RAFDB_ALIGNED = Framing("rafdb-aligned", "template", 1.0, 100, DEFAULT_BORDER,
                        "RAF-DB basic Image/aligned: 5-point similarity, 100x100, tight "
                        "(approximated by the ArcFace template at margin 1.0)")
# AffectNet's images are its annotated face boxes cropped (not rotated, not landmark-aligned).
AFFECTNET_CROP = Framing("affectnet-crop", "box", 1.25, 224, DEFAULT_BORDER,
                         "AffectNet face-box crops: axis-aligned square, 1.25 x the landmark box, no rotation")
DATASET_CROP = Framing("dataset-crop", None, 0.0, 224, DEFAULT_BORDER,
                       "a dataset's own crop of unknown geometry (ingest --keep-framing); "
                       "no detector recipe, so predict cannot reproduce it")

FRAMINGS: dict[str, Framing] = {f.name: f for f in (PROJECT, RAFDB_ALIGNED, AFFECTNET_CROP, DATASET_CROP)}
# The framing a source's files already have (what --keep-framing records).
SOURCE_FRAMING = {"rafdb": "rafdb-aligned", "affectnet": "affectnet-crop"}


def get(name: str | Framing | dict | None) -> Framing:
    """A Framing from a name, a dict (manifest / model extra) or a Framing; None → project."""
    if name is None:
        return PROJECT
    if isinstance(name, Framing):
        return name
    if isinstance(name, dict):
        fields = {f.name for f in dataclasses.fields(Framing)}
        base = FRAMINGS.get(name.get("name", ""), DATASET_CROP)
        return base.with_(**{k: v for k, v in name.items() if k in fields})
    if name not in FRAMINGS:
        raise FramingError(f"unknown framing {name!r}; choose from {sorted(FRAMINGS)}")
    return FRAMINGS[name]


def kept_framing(source: str, name: str | None = None) -> Framing:
    """What `--keep-framing [NAME]` records: NAME, else the source's own, else dataset-crop."""
    return get(name) if name else get(SOURCE_FRAMING.get(source, "dataset-crop"))


def of_manifest(manifest: dict[str, Any]) -> Framing:
    """The framing of an ingest output; manifests written before framings existed are read from
    their detector mode (``skip`` kept the dataset's crop)."""
    if isinstance(manifest.get("framing"), dict):
        return get(manifest["framing"])
    det = manifest.get("detector") or {}
    src = manifest.get("source") or {}
    if det.get("mode") == "skip":
        return kept_framing(src.get("name", "") if isinstance(src, dict) else str(src))
    return project(float(det.get("margin", PROJECT.margin)), border="constant")


def record_of_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a model trained on `manifest` carries: the framing spec plus its origin
    (``detector``: cut by ingest; ``dataset``: the dataset's own crop, kept)."""
    origin = (manifest.get("framing") or {}).get("origin")
    if origin is None:
        origin = "dataset" if (manifest.get("detector") or {}).get("mode") == "skip" else "detector"
    return {**of_manifest(manifest).to_dict(), "origin": origin}


def of_extra(extra: dict[str, Any] | None) -> Framing:
    """The framing a model was trained on (weights ``extra``); older models: the project's."""
    f = (extra or {}).get("framing")
    return get(f) if f else PROJECT


def transform(framing: Framing, lm68: np.ndarray, five: np.ndarray) -> np.ndarray:
    """2x3 matrix from source pixels to the framing's `size` x `size` frame."""
    if framing.recipe == "template":
        return similarity_transform(five, template_5pts(framing.size, framing.margin))
    if framing.recipe == "box":
        lo, hi = np.nanmin(lm68, 0), np.nanmax(lm68, 0)
        side = framing.margin * float(max(hi - lo))
        centre = (lo + hi) / 2 - np.array([0.0, 0.1 * side])  # the 68 points stop at the brows
        s = framing.size / max(side, 1e-6)
        return np.array([[s, 0, framing.size / 2 - s * centre[0]], [0, s, framing.size / 2 - s * centre[1]]])
    raise FramingError(f"framing {framing.name!r} has no detector recipe")


def apply(rgb: np.ndarray, lm68: np.ndarray, five: np.ndarray, framing: Framing, source: str = "detector"):
    """Cut the framing out of `rgb` given its landmarks (pixels) → ``FaceResult`` at 224."""
    m = transform(framing, np.asarray(lm68, np.float64), np.asarray(five, np.float64))
    out = warp_face(rgb, m, framing.size, framing.border)
    filled = source_fill(rgb.shape, m, framing.size)
    lm = transform_points(lm68, m)
    if framing.size != ALIGNED_SIZE:  # the dataset's resolution, resized as ingest resizes it
        k = ALIGNED_SIZE / framing.size
        out = cv2.resize(out, (ALIGNED_SIZE, ALIGNED_SIZE),
                         interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
        lm = lm * k
    return finish_face(out, lm, ALIGNED_SIZE, source, filled)


def prepare_face(rgb: np.ndarray, framing: Framing | str | dict | None, processor: Any,
                 box: tuple[float, float, float, float] | None = None):
    """The one per-image preprocessing of raw photos for a model: detect, then cut `framing`.

    Used by ``pipeline.predict`` (files and batches) and the pyfunc's raw-photo mode; ingest's
    ``FaceProcessor.process`` is the same code with the project framing. Raises NoFaceError, or
    FramingError when `framing` has no detector recipe (``resolve_for_predict`` picks a fallback).
    """
    framing = get(framing)
    if not framing.detector_recipe:
        raise FramingError(f"framing {framing.name!r} has no detector recipe; it cannot be cut from a photo")
    rgb = as_rgb(rgb)
    region, off = rgb, np.zeros(2)
    if box is not None:
        region, off = box_region(rgb, box)
    lm68, five = processor.detect68(region)
    return apply(rgb, lm68 + off, five + off, framing)


def resolve_for_predict(model_framing: Framing, override: str | None = None) -> Framing:
    """The framing predict uses: `override`, else the model's; a framing without a detector recipe
    falls back to the project framing with a FramingWarning that says how to fix it."""
    if override:
        return get(override)
    if model_framing.detector_recipe:
        return model_framing
    named = ", ".join(n for n, f in FRAMINGS.items() if f.detector_recipe)
    warnings.warn(
        f"the model was trained on framing {model_framing.name!r} (a dataset's own crops, kept "
        "with `pipeline.ingest --keep-framing`), which has no detector recipe: predicting with the "
        "'project' framing instead, so expect lower accuracy on photos. Fix: re-ingest without "
        "--keep-framing (the default re-aligns with the detector) and retrain, or, if the crops "
        f"follow a named framing, pass --framing NAME ({named}).",
        FramingWarning, stacklevel=2)
    return PROJECT
