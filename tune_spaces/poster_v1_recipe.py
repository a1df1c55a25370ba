"""The official POSTER V1 optimiser recipe around its published point: lr, SAM rho, batch.

Why: the official RAF-DB run uses SAM(Adam) with lr 4e-5, rho 0.05 and batch 200 (AffectNet:
lr 2e-6), found for 8 GPUs and 300 epochs; a different dataset, GPU count or schedule length
moves the best lr and batch, and SAM's rho interacts with both.

Search over: ``optim.lr`` (log scale around 4e-5), ``optim.sam_rho`` and ``data.batch_size``
(per worker: the global batch is num_workers times this). ``optim.sam`` is pinned to true,
because rho means nothing without SAM.
"""

SPACE = {
    "optim.sam": True,
    "optim.lr": {"loguniform": [1.0e-5, 3.0e-4]},
    "optim.sam_rho": {"loguniform": [0.01, 0.2]},
    "data.batch_size": {"choice": [16, 25, 32, 48]},
}
