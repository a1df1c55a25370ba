"""`python -m pipeline.registry`: runs `pipeline.registry.cli.main`."""
import sys

from pipeline.cli import run_cli
from pipeline.registry.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
