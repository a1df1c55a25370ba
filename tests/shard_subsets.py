"""Small shard sets cut from a larger one, for tests that only need a few rows of each class."""
from __future__ import annotations

import json
from pathlib import Path


def subset_test_rows(src: str | Path, dst: str | Path, per_class: int = 1, **manifest_changes) -> str:
    """Copy ``per_class`` test rows of every class of ``src`` into ``dst`` (one shard), with a
    manifest whose counts match and whose other fields may be changed (e.g. ``classes=[...]``)."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    src, dst = Path(src), Path(dst)
    table = pads.dataset(src / "test", format="parquet").to_table()
    seen: dict[int, int] = {}
    keep = []
    for i, label in enumerate(table.column("label").to_pylist()):
        if seen.get(label, 0) < per_class:
            keep.append(i)
            seen[label] = seen.get(label, 0) + 1
    (dst / "test").mkdir(parents=True)
    pq.write_table(table.take(keep), dst / "test" / "part-00000.parquet")
    manifest = json.loads((src / "_manifest.json").read_text())
    manifest["counts"] = {"test": {c: seen.get(i, 0) for i, c in enumerate(manifest["classes"])}}
    manifest["shards"] = [{"path": "test/part-00000.parquet", "split": "test", "rows": len(keep)}]
    manifest.update(manifest_changes)
    (dst / "_manifest.json").write_text(json.dumps(manifest))
    return str(dst)
