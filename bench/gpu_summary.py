"""Merge bench/gpu_suite.sh's parts into one model_step.json and print a markdown summary.

    python bench/gpu_summary.py PARTS_DIR OUT_DIR > OUT_DIR/summary.md
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

COLS = ("model", "compile", "precision", "channels_last", "optimizer", "batch", "step")


def merge(parts: Path, out: Path) -> tuple[dict, list[dict]]:
    header, rows = {}, []
    for f in sorted(parts.glob("ms_*.json")):
        blob = json.loads(f.read_text())
        header = header or blob["header"]
        rows += [dict(r, part=f.stem) for r in blob["rows"]]
    (out / "model_step.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    return header, rows


def cell(v) -> str:
    if v is None:
        return ""
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def table(rows: list[dict]) -> list[str]:
    cols = (*COLS, "img_s", "step_ms", "mfu", "peak_mem_gib", "first_step_s", "status")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(cell(r.get(c)) for c in cols) + " |")
    return lines


def main() -> None:
    parts, out = Path(sys.argv[1]), Path(sys.argv[2])
    header, rows = merge(parts, out)
    print(f"# GPU suite\n\n{json.dumps(header)}\n\n## Model step (img/s per optimiser step)\n")
    print("\n".join(table(rows)))
    ok = [r for r in rows if "img_s" in r and r["model"].startswith("poster")]
    for kind in ("sam", "plain"):
        best = max((r for r in ok if r["step"] == kind), key=lambda r: r["img_s"], default=None)
        if best:
            print(f"\nbest POSTER {kind} step: {best['img_s']:.0f} img/s, "
                  + ", ".join(f"{c}={best[c]}" for c in COLS[1:]))
    data = out / "data_pipeline.json"
    if data.is_file():
        print(f"\n## Data path\n\n```\n{json.dumps(json.loads(data.read_text()), indent=1)}\n```")
    else:
        print("\n## Data path\n\nno data_pipeline.json (stage failed or ran out of time: see suite.log)")


if __name__ == "__main__":
    main()
