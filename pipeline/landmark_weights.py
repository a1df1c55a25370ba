"""Where POSTER's landmark net comes from, for every training run: a file, a registered
``pipeline.pretrain landmarks`` model (``models:/poster-landmarks@candidate``), an official
checkpoint, or nothing — a random net, frozen unless ``landmark_trainable``.

A random frozen MobileFaceNet in eval mode gives near-constant features (~6e-5 in magnitude on
real faces, vs 0.16 for the IR-50), so its landmark tokens carry almost nothing; such a run warns
once per process and is tagged ``poster.landmark_net=random-frozen`` (the model card says so too).
"""
from __future__ import annotations

import contextlib
import hashlib
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

RANDOM_FROZEN = "random-frozen"
_warned = False


def is_model_uri(spec: str) -> bool:
    return spec.startswith(("models:/", "runs:/"))


@contextlib.contextmanager
def landmark_file(spec: str, tracking_uri: str = "") -> Iterator[Path | None]:
    """A local path for ``model.mobilefacenet_weights``: a file as is, a ``models:/``/``runs:/``
    URI downloaded (the weights artifact of a registered landmark model) for the block."""
    if not spec:
        yield None
        return
    if not is_model_uri(spec):
        yield Path(spec)
        return
    import mlflow

    from pipeline.artifact.load import resolve_model_uri
    from pipeline.tracking import default_tracking_uri

    uri = default_tracking_uri(tracking_uri)
    location = resolve_model_uri(spec, uri).rstrip("/")
    with tempfile.TemporaryDirectory() as d:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/artifacts", dst_path=d,
                                                             tracking_uri=uri))
        except Exception as e:
            raise FileNotFoundError(f"model.mobilefacenet_weights={spec}: no landmark weights there ({e}); "
                                    "register one with `python -m pipeline.pretrain landmarks --shards DIR`") from e
        found = sorted(local.rglob("*.pth")) if local.is_dir() else [local]
        if not found:
            raise FileNotFoundError(f"model.mobilefacenet_weights={spec}: the model holds no .pth weights; "
                                    "is it a `pipeline.pretrain landmarks` model?")
        yield found[0]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def landmark_net_tags(mcfg: Any, tracking_uri: str = "") -> dict[str, str]:
    """Tags recording the run's landmark net (source and file hash); warns once for a random frozen net."""
    trainable = bool((mcfg.overrides or {}).get("landmark_trainable", False))
    if mcfg.official_checkpoint:
        return {"poster.landmark_net": "official-checkpoint", "poster.landmark_weights_source": mcfg.official_checkpoint}
    if mcfg.mobilefacenet_weights:
        with landmark_file(mcfg.mobilefacenet_weights, tracking_uri) as path:
            digest = sha256(path)
        return {"poster.landmark_net": "pretrained", "poster.landmark_weights_source": mcfg.mobilefacenet_weights,
                "poster.landmark_weights_sha256": digest}
    if trainable:
        return {"poster.landmark_net": "random-trainable"}
    warn_random_frozen()
    return {"poster.landmark_net": RANDOM_FROZEN}


def warn_random_frozen() -> None:
    global _warned
    if _warned:
        return
    _warned = True
    print("[poster] warning: the landmark net (MobileFaceNet) is random and frozen: its features are "
          "near-constant, so POSTER's landmark stream carries almost no signal. Pretrain one with "
          "`python -m pipeline.pretrain landmarks --shards DIR` and set "
          "model.mobilefacenet_weights=models:/poster-landmarks@candidate (or a file).", file=sys.stderr, flush=True)
