"""`python -m pipeline.tune`: runs `pipeline.tune.cli.main`."""
import sys

from pipeline.cli import run_cli
from pipeline.tune.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
