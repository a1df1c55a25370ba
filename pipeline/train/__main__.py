"""`python -m pipeline.train`: runs `pipeline.train.cli.main`."""
import sys

from pipeline.cli import run_cli
from pipeline.train.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
