import sys

from pipeline.pretrain.cli import main

sys.exit(main())
