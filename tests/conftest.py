"""Session-wide fixtures: one Ray runtime for the whole test session, the shared sample data.

Ray settings follow docs/design.md: quiet logs, no usage stats, token auth off for the
throwaway local cluster, a small object store.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

# Must be set before Ray is imported anywhere in the session.
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def ray_session():
    """Start Ray once per test session (2 logical CPUs, like the CI machine)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
            object_store_memory=768 * 1024**2,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout; tests that need it skip with a message when absent."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent (it exists on the dev machines and in CI, not on a user's)")
    return SHARED
