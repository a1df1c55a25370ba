"""How much of each re-aligned frame the border policy filled, and the note ingest prints when a
set of tight crops (CK+, FER2013) loses resolution to it (docs/ingest.md, "Tight crops")."""
from __future__ import annotations

# A re-aligned row whose source covered less than 60 % of the frame: a CK+/FER2013-like tight crop
# (~0.6 filled at 48 px) rather than RAF-DB's aligned 100 px crops (~1/3 filled) or a photo (~0).
TIGHT_FILL = 0.4
TIGHT_ROWS = f"rows_over_{TIGHT_FILL:g}"  # the manifest key counting them


def border_fill_stats(fills: list[float]) -> dict[str, float]:
    """Mean share of the frame filled beyond the source, and how many rows filled >= TIGHT_FILL."""
    if not fills:
        return {"mean": 0.0, TIGHT_ROWS: 0}
    return {"mean": round(sum(fills) / len(fills), 4), TIGHT_ROWS: int(sum(f >= TIGHT_FILL for f in fills))}


def tight_crop_hint(manifest: dict, written: int) -> str | None:
    """A note when most re-aligned faces came from crops tighter than the project framing (CK+,
    FER2013): the border fill then takes ~60 % of each frame and the face loses resolution."""
    fill, framing = manifest.get("border_fill") or {}, manifest.get("framing") or {}
    tight = int(fill.get(TIGHT_ROWS, 0))
    if framing.get("origin") != "detector" or not written or tight * 2 <= written:
        return None
    mean = float(fill.get("mean", 0.0))
    span = (1.0 - mean) ** 0.5  # the side of the frame the source still covers
    # the template scaled by 1/span makes the source fill the frame again
    tighter = round(float(framing.get("margin", 0.8)) / max(span, 0.1), 1)
    return (f"note: {tight} of {written} faces were crops tighter than the project framing; re-aligned, "
            f"{mean:.0%} of each frame on average is border fill and the source spans ~{span:.0%} "
            f"of its side, so the model sees the face smaller. Re-align tighter with --margin {tighter:g} "
            "(predict still cuts that framing from photos), or keep the crops with --keep-framing (predict "
            "cannot reproduce them). CK+-like lab48 faces split by person, test: ~0.91 at the default margin, "
            "~0.94 at --margin 1.2, ~0.95 kept (docs/ingest.md, \"Tight crops\").")
