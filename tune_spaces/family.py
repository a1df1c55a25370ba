"""Architecture family x loss mixture: POSTER V1 (small / base / large) against POSTER V2, each
with every loss mixture of ``loss_mix``.

Why: POSTER V2 (POSTER++) is what most FER users now start from: fewer parameters than V1-large
(43.8 M vs 59.0 M clean) and a better reported RAF-DB accuracy (92.21 % vs 92.05 %), but it was
trained with plain CE while V1 used CE + 2 x label-smoothed CE. Whether V2's edge survives V1's
loss (or the metric-learning terms), and whether the best loss depends on the family, is one
question: search both together. V2's features (the SE output the metric losses see) are 768-d,
V1's 512-d.

Search over: ``model.variant`` in {small, base, large, v2} and every key of ``loss_mix``.
``model.overrides`` must stay empty in the base config (V1 fields such as pyramid_levels mean
nothing to V2, V2's window_heads nothing to V1). For a CPU smoke sweep use ``family_smoke``.
"""
from tune_spaces import loss_mix

SPACE = {"model.variant": {"choice": ["small", "base", "large", "v2"]}, **loss_mix.SPACE}
