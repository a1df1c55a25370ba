"""How much of each re-aligned frame the border policy filled, and the note ingest prints when a
set of tight crops (CK+, FER2013) loses resolution to it (docs/ingest.md, "Tight crops")."""
from __future__ import annotations

# A re-aligned row whose source covered less than 60 % of the frame: a CK+/FER2013-like tight crop
# (~0.6 filled at 48 px) rather than RAF-DB's aligned 100 px crops (~1/3 filled) or a photo (~0).
TIGHT_FILL = 0.4


def border_fill_stats(fills: list[float]) -> dict[str, float]:
    """Mean share of the frame filled beyond the source, and how many rows filled >= TIGHT_FILL."""
    if not fills:
        return {"mean": 0.0, "rows_over_0.4": 0}
    return {"mean": round(sum(fills) / len(fills), 4), "rows_over_0.4": int(sum(f >= TIGHT_FILL for f in fills))}


def tight_crop_hint(manifest: dict, written: int) -> str | None:
    """A note when most re-aligned faces came from crops tighter than the project framing (CK+,
    FER2013): the border fill then takes ~60 % of each frame and the face loses resolution."""
    fill = manifest.get("border_fill") or {}
    tight = int(fill.get("rows_over_0.4", 0))
    if (manifest.get("framing") or {}).get("origin") != "detector" or not written or tight * 2 <= written:
        return None
    mean = float(fill.get("mean", 0.0))
    return (f"note: {tight} of {written} faces were crops tighter than the project framing; re-aligned, "
            f"{mean:.0%} of each frame on average is border fill and the source spans ~{(1 - mean) ** 0.5:.0%} "
            "of its side. Tight crops trained and tested in their own framing keep their resolution with "
            "--keep-framing (CK+-like lab48 faces split by person: test ~0.95 kept vs ~0.91 re-aligned); the "
            "default keeps the framing predict cuts from photos (docs/ingest.md, \"Tight crops\").")
