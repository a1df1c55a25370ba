"""`python -m pipeline.evaluate`: runs `pipeline.evaluate.cli.main`."""
import sys

from pipeline.cli import run_cli
from pipeline.evaluate.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
