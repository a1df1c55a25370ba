"""Loss mixture: how much each term of ``LossMixture`` contributes, and each term's own knob.

Why: the official POSTER V1 recipe fixes CE + 2 x label-smoothed CE (smoothing 0.2); nobody has
checked whether the metric-learning terms (SupCon, Circle) or plain soft-target CE help on
facial expressions, where classes overlap (fear/surprise, disgust/anger). Every term's weight may
be zero, so the sweep can also switch terms off.

Search over: ``loss.weights.<term>`` for ce, lsce, soft_ce, supcon, circle (zero included),
``loss.label_smoothing`` (used by lsce), ``loss.supcon_temperature``, ``loss.circle_m`` and
``loss.circle_gamma``.

Degenerate draws: when ce = lsce = soft_ce = 0 (1 draw in 27) only the feature losses train and
the classifier head stays random; such trials score near chance and ASHA stops them at the first
rung. When every weight is 0 (1 in 243) config validation rejects the draw and the trial is
recorded as failed. Use ``--search optuna`` to learn to avoid both.
"""

SPACE = {
    # Classification terms (each on the logits).
    "loss.weights.ce": {"choice": [1.0, 0.5, 0.0]},
    "loss.weights.lsce": {"choice": [2.0, 1.0, 0.0]},
    "loss.weights.soft_ce": {"choice": [0.0, 0.5, 1.0]},
    # Metric-learning terms (on the 512-d features); small weights, they are auxiliary.
    "loss.weights.supcon": {"choice": [0.0, 0.1, 0.3]},
    "loss.weights.circle": {"choice": [0.0, 0.1, 0.3]},
    "loss.label_smoothing": {"uniform": [0.0, 0.3]},
    "loss.supcon_temperature": {"loguniform": [0.05, 0.5]},
    "loss.circle_m": {"uniform": [0.15, 0.4]},
    "loss.circle_gamma": {"choice": [32.0, 64.0, 128.0]},
}
