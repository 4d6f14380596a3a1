"""The loop's MLflow client waits out an unreachable server with backoff; other errors pass at once."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException

from agentexp.tracking.patience import Patient

DOWN = (
    "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/create failed with exception Connection refused"
)


class FlakyClient:
    """Refuses `outage` calls as an unreachable server does, then answers."""

    def __init__(self, outage: int):
        self.outage, self.calls = outage, 0

    def create_run(self, name: str) -> str:
        self.calls += 1
        if self.calls <= self.outage:
            raise MlflowException(DOWN)
        return f"run {name}"

    def get_run(self, run_id: str) -> None:
        raise MlflowException(f"Run '{run_id}' not found", error_code="RESOURCE_DOES_NOT_EXIST")


def test_calls_wait_with_backoff_until_the_server_answers(caplog):
    pauses: list[float] = []
    client = Patient(FlakyClient(outage=8), sleep=pauses.append)
    assert client.create_run("a") == "run a"
    assert pauses == [1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 30.0, 30.0]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "tracking server unreachable (create_run); waiting for it, nothing is dropped",
        "tracking server back after 120s; create_run went through",
    ]


def test_other_errors_and_a_long_outage_reach_the_caller():
    pauses: list[float] = []
    with pytest.raises(MlflowException, match="not found"):
        Patient(FlakyClient(outage=0), sleep=pauses.append).get_run("x")
    assert pauses == []
    with pytest.raises(MlflowException, match="failed with exception"):
        Patient(FlakyClient(outage=100), sleep=pauses.append, give_up_s=10).create_run("b")
    assert pauses == [1.0, 2.0, 4.0, 8.0]
