"""Ingest: raw datasets -> aligned-face Parquet shards (docs/ingest.md, docs/design.md "Shards")."""
from pipeline.ingest.core import IngestError, IngestReport, OutputExistsError, ingest
from pipeline.ingest.options import IngestOptions

__all__ = ["ingest", "IngestOptions", "IngestReport", "IngestError", "OutputExistsError"]
