"""Waiting out a tracking server that went away: every MLflow call retried with backoff until it answers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import requests
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
"""Pauses between attempts; the last one repeats."""
GIVE_UP_S = 1800.0
"""How long one call waits for the server before its error reaches the loop."""
GONE = ("failed with exception", "failed with timeout exception", "TEMPORARILY_UNAVAILABLE")
"""How MLflow's REST client words a server it could not reach (after its own retries)."""


def unreachable(err: BaseException) -> bool:
    """Whether the error says the server did not answer, rather than that it refused the request."""
    if isinstance(err, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    return isinstance(err, MlflowException) and any(text in str(err) for text in GONE)


class Patient:
    """An MlflowClient whose calls wait for an unreachable server (warning once per outage, no traceback)
    instead of failing the cycle; any other error passes through at once."""

    def __init__(
        self, client: Any, sleep: Callable[[float], None] = time.sleep, give_up_s: float = GIVE_UP_S
    ):
        self._client, self._sleep, self._give_up_s = client, sleep, give_up_s

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._client, name)
        if not callable(found):
            return found
        return lambda *args, **kwargs: self._call(name, found, args, kwargs)

    def _call(self, name: str, method: Callable, args: tuple, kwargs: dict) -> Any:
        waited, attempt = 0.0, 0
        while True:
            try:
                result = method(*args, **kwargs)
            except Exception as err:
                if not unreachable(err) or waited >= self._give_up_s:
                    raise
                pause = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
                if attempt == 0:
                    log.warning("tracking server unreachable (%s); waiting for it, nothing is dropped", name)
                self._sleep(pause)
                waited, attempt = waited + pause, attempt + 1
                continue
            if attempt:
                log.warning("tracking server back after %.0fs; %s went through", waited, name)
            return result
