"""CPU smoke version of ``family``: the two CPU variants (POSTER V1 ``tiny`` and POSTER V2
``v2_tiny``, same code as the real models, thin backbones) with every loss mixture of ``loss_mix``.

Why: checks on a laptop that a family x loss sweep runs end to end (both families build, train,
report and compare in one Tune experiment) before spending GPU hours on ``family``.
"""
from tune_spaces import loss_mix

SPACE = {"model.variant": {"choice": ["tiny", "v2_tiny"]}, **loss_mix.SPACE}
