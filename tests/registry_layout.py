"""The registry's two models seen as one, for tests written against candidate version numbers."""
from __future__ import annotations

from typing import Any


def aliases(client: Any, name: str) -> dict[str, str]:
    """{"challenger": candidates' @challenger, "champion": the candidate version the served
    @champion was copied from}, each only when set."""
    from mlflow.exceptions import MlflowException

    out: dict[str, str] = {}
    try:
        ch = client.get_registered_model(name + "-candidates").aliases.get("challenger")
    except MlflowException:
        ch = None
    if ch is not None:
        out["challenger"] = str(ch)
    try:
        champ = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        champ = None
    if champ is not None:
        out["champion"] = dict(champ.tags)["candidate_version"]
        assert champ.source == f"models:/{name}-candidates/{out['champion']}", champ.source
    return out
