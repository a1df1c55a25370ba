"""`python -m pipeline.ingest`: runs `pipeline.ingest.cli.main`."""
import sys

from pipeline.cli import run_cli
from pipeline.ingest.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
