"""Search spaces for ``python -m pipeline.tune``, written as plain data (no Ray here).

Each module exports ``SPACE``: a dict keyed by a path in the training config tree
(``optim.lr``, ``loss.weights.supcon``, ``model.overrides.depth``) whose value is either a fixed
value or one domain::

    {"choice": [a, b, ...]}        one of the values (values may be lists, e.g. pyramid levels)
    {"grid": [a, b, ...]}          every value (grid search; random search only)
    {"uniform": [lo, hi]}          float in [lo, hi]
    {"loguniform": [lo, hi]}       float, log scale, 0 < lo < hi
    {"quniform": [lo, hi, q]}      float rounded to a multiple of q
    {"randint": [lo, hi]}          int in [lo, hi)

``pipeline.tune.space`` checks a space against the config tree and ``pipeline.tune`` turns it
into Ray Tune domains. ``loss.weights.<term>`` sets one entry of the weights dict (the other
terms keep the base config's weights); ``model.overrides.<field>`` sets one PosterConfig field.
"""
