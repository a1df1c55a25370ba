"""Two learning rates, nothing else: the smallest sweep with two trials (``--num-samples 1``).

Why: a cluster rehearsal (tests/test_cluster_local.py, cluster/README.md "Losing a node") needs
exactly two trials that always build and train, one per node with ``--max-concurrent 2`` and
``scaling.worker_resources={poster_node: 1}``; it measures recovery, not the search.
"""

SPACE = {"optim.lr": {"grid": [0.002, 0.004]}}
