"""The review's decision rule on its own (`pipeline.registry.promotion.decide`, pure: no MLflow)."""
from __future__ import annotations

import pytest

from pipeline.registry.promotion import VersionEval, decide


def _ev(version: str, acc: float) -> VersionEval:
    return VersionEval("x", version, "run", {"accuracy": acc}, [], [], {}, {})


@pytest.mark.parametrize("ch,champ,promote,force,decision,wins", [
    (0.80, None, True, False, "promoted", True),      # no champion yet: the first one wins
    (0.80, 0.70, True, False, "promoted", True),      # beats it by more than the margin
    (0.72, 0.70, True, False, "rejected", False),     # within the margin (0.05)
    (0.72, 0.70, False, False, "none", False),        # dry run decides nothing
    (0.60, 0.70, True, True, "promoted", False),      # forced, and says so
])
def test_decide(ch, champ, promote, force, decision, wins):
    delta, won, got, why, forced = decide(_ev("2", ch), None if champ is None else _ev("1", champ),
                                          "accuracy", 0.05, promote, force, "ops" if force else "", "me")
    assert (got, won, forced) == (decision, wins, force and not wins)
    assert delta == (None if champ is None else pytest.approx(ch - champ))
    assert ("forced by me: ops" in why) == forced and ("dry run" in why) == (not promote)
