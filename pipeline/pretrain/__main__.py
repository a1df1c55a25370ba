import sys

from pipeline.cli import run_cli
from pipeline.pretrain.cli import main

sys.exit(run_cli(main))
