"""The MLflow model registry: `names` (registered name, aliases, tags, client), `versions` (register,
list, show, best trial), `promotion` (the review: challenger vs champion) with its `history` (lock, decisions),
`card` (model cards), `import_official` (official checkpoints) and `cli` (`python -m pipeline.registry`)."""
from pipeline.registry.names import (CHALLENGER, CHAMPION, DEFAULT_NAME, RegistryError,  # noqa: F401
                                     ReviewRefused, client_for, resolve_uri)
from pipeline.registry.promotion import ReviewResult, review  # noqa: F401
from pipeline.registry.versions import (best_trial_run, list_versions, register_run,  # noqa: F401
                                        show_version)
