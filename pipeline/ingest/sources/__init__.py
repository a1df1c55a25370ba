"""Source adapters. Each module turns one dataset layout into the common record stream.

A module exposes `NAME`, `ORDER` (its official label order in canonical names), `DEFAULT_CLASSES`
(7 or 8) and `records(root: Root, opts: SourceOptions) -> Iterator[dict]` yielding
`pipeline.ingest.records.record(...)` dicts.
"""
from __future__ import annotations

import os
import posixpath
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
    allow_outside_input: bool = False  # list-driven sources: read listed paths outside the root


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


def row_path(root: Root, named: str, allow_outside: bool = False) -> str | None:
    """What a record's `path` gets for a path a list row names (relative to `root`, absolute, or
    a URI), or None when it escapes `root` and `allow_outside` is false.

    The test is on the normalised text (no file is opened): `..` that climbs out of the root, an
    absolute path elsewhere, another scheme, or another bucket is outside. A listed file can
    still be a symlink that points elsewhere; the folder source follows those too.
    """
    named = named.strip()
    if "://" in named:
        scheme, rest = named.split("://", 1)
        if allow_outside:
            return named
        if scheme == "file" and root.local:
            full = posixpath.normpath("/" + rest.lstrip("/"))
        elif root.local or scheme != root._scheme:
            return None
        else:
            full = posixpath.normpath("/" + rest)[1:]
    elif named.startswith("/"):
        if allow_outside:
            return named
        if not root.local:
            return None
        full = posixpath.normpath(named)
    else:
        full = posixpath.normpath(S.join(root.base, named))
    base = root.base.rstrip("/")
    if not allow_outside and not full.startswith(base + "/"):
        return None
    return full if root.local else f"{root._scheme}://{full}"


def outside_detail(where: str, named: str, root: Root) -> str:
    """Reject detail for `outside_input`: the row and the path as listed (never file contents)."""
    shown = named if len(named) <= 200 else named[:200] + "..."
    return (f"{where}: {shown!r} is outside the input root {root.uri}; "
            "pass --allow-outside-input to read it")


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
