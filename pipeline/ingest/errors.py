"""Ingest's two failures, apart from `core` so that `output` can raise them without importing `core`."""


class IngestError(RuntimeError):
    """The ingest ran but its result is not acceptable (exit status 1)."""


class OutputExistsError(IngestError):
    """The output exists and --overwrite was not given (exit status 2)."""
