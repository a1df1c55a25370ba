"""Everything at once: the loss mixture, the pyramid shape and the V1 optimiser recipe.

Why: the three smaller spaces are searched one at a time on purpose (each asks one question),
but their best points interact: deeper pyramids want a lower lr, metric losses want wider
features. This space is the union of ``loss_mix``, ``pyramid`` and ``poster_v1_recipe`` (13
dimensions); random search covers it poorly, so run it with ``--search optuna`` (or hyperopt)
and many samples, after the small spaces have narrowed the ranges.
"""
from tune_spaces import loss_mix, poster_v1_recipe, pyramid

SPACE = {**loss_mix.SPACE, **pyramid.SPACE, **poster_v1_recipe.SPACE}
