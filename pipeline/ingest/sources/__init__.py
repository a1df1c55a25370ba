"""Source adapters. Each module turns one dataset layout into the common record stream.

A module exposes `NAME`, `ORDER` (its official label order in canonical names), `DEFAULT_CLASSES`
(7 or 8) and `records(root: Root, opts: SourceOptions) -> Iterator[dict]` yielding
`pipeline.ingest.records.record(...)` dicts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType
from typing import Iterator

from pyarrow import fs as pafs

from pipeline import schema as S


@dataclass
class SourceOptions:
    n_classes: int = 7
    classes: tuple[str, ...] = ()     # the resolved class list (synthetic draws exactly these)
    label_map: dict | None = None     # raw label -> canonical name ("!reason" to reject)
    per_class: int = 40               # synthetic
    seed: int = 0                     # synthetic
    test_fraction: float = 0.2        # synthetic
    image_column: str | None = None   # hf
    label_column: str | None = None   # hf


class Root:
    """A folder (local path or URI) seen through a pyarrow filesystem, with relative helpers."""

    def __init__(self, uri: str):
        self.uri = str(uri)
        self.fs, self.base = S.filesystem(self.uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self._scheme = self.uri.split("://", 1)[0] if "://" in self.uri else ""

    def path(self, *rel: str) -> str:
        return S.join(self.base, *rel) if rel else self.base

    def ref(self, *rel: str) -> str:
        """What a record's `path` gets: an absolute local path or a full URI."""
        p = self.path(*rel)
        return p if self.local else f"{self._scheme}://{p}"

    def info(self, *rel: str):
        return self.fs.get_file_info(self.path(*rel))

    def isdir(self, *rel: str) -> bool:
        return self.info(*rel).type == pafs.FileType.Directory

    def isfile(self, *rel: str) -> bool:
        return self.info(*rel).type == pafs.FileType.File

    def read_text(self, *rel: str) -> str:
        with self.fs.open_input_stream(self.path(*rel)) as f:
            return f.read().decode("utf-8-sig")

    def listdir(self, *rel: str) -> list[str]:
        sel = pafs.FileSelector(self.path(*rel), allow_not_found=True)
        return sorted(i.base_name for i in self.fs.get_file_info(sel))

    def walk_files(self, *rel: str) -> Iterator[str]:
        """Relative paths of all files below, sorted; dot files and dot folders are skipped.

        Dangling symlinks are listed too, so they surface as `unreadable` instead of vanishing.
        """
        top = self.path(*rel)
        if self.local:
            for d, dirs, files in os.walk(top):
                dirs[:] = sorted(x for x in dirs if not x.startswith("."))
                for name in sorted(files):
                    if not name.startswith("."):
                        yield os.path.relpath(os.path.join(d, name), self.base).replace(os.sep, "/")
            return
        sel = pafs.FileSelector(top, recursive=True, allow_not_found=True)
        for info in sorted(self.fs.get_file_info(sel), key=lambda i: i.path):
            relp = info.path[len(self.base):].lstrip("/")
            if info.type == pafs.FileType.File and not any(p.startswith(".") for p in relp.split("/")):
                yield relp


def _load(name: str) -> ModuleType:
    import importlib

    return importlib.import_module(f"pipeline.ingest.sources.{name}")


# --source value -> module name
SOURCES = {
    "rafdb": "rafdb", "affectnet": "affectnet", "fer2013": "fer2013", "ferplus": "ferplus",
    "folder": "folder", "csv": "csvlist", "hf": "hf", "synthetic": "synthetic",
}


def get_source(name: str) -> ModuleType:
    if name not in SOURCES:
        raise ValueError(f"unknown source {name!r}; choose one of {sorted(SOURCES)}")
    return _load(SOURCES[name])
