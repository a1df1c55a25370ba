"""`python -m pipeline.predict`: runs `pipeline.predict.cli.main`."""
import sys

from pipeline.cli import run_cli
from pipeline.predict.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
