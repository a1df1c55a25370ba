"""The MLflow model registry: `names` (registered names, aliases, tags, client), `versions` (register,
list, show, best trial), `promotion` (the review: challenger vs champion, promotion by copy into the
served model) with its `history` (lock, decisions) and `record` (what a review writes), `migrate`
(single-model registries), `card` (model cards), `import_official` (official checkpoints) and `cli`
(`python -m pipeline.registry`). Training registers into ``<name>-candidates``; only a review
writes the served ``<name>`` (docs/registry.md)."""
from pipeline.registry.names import (CHALLENGER, CHAMPION, DEFAULT_NAME, RegistryError,  # noqa: F401
                                     ReviewRefused, candidates_of, client_for, resolve_uri)
from pipeline.registry.promotion import ReviewResult, review  # noqa: F401
from pipeline.registry.versions import (best_trial_run, list_versions, register_run,  # noqa: F401
                                        show_version)
