"""Ingest: raw datasets -> aligned-face Parquet shards (docs/ingest.md, docs/design.md "Shards")."""
from pipeline.ingest.core import IngestError, IngestReport, OutputExistsError, ingest

__all__ = ["ingest", "IngestReport", "IngestError", "OutputExistsError"]
