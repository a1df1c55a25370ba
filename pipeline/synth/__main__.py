"""`python -m pipeline.synth`: runs `pipeline.synth.cli.main`."""
import sys

from pipeline.cli import run_cli
from pipeline.synth.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
