"""One redactor for every string that leaves the process: API keys and token-shaped secrets removed."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

MASK = "[REDACTED]"
MIN_SECRET_CHARS = 8  # shorter env values ("1", "true") are settings, not secrets
_SECRET_ENV_NAME = re.compile(r"API_?KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE_KEY", re.IGNORECASE)
_NOT_A_VALUE = re.compile(r"_(FILE|PATH|DIR|HOME)$", re.IGNORECASE)  # names of places, not of secrets
_named_envs: set[str] = set()

# Secrets recognisable by their shape alone, whoever set them.
_TOKENS = re.compile(
    "|".join(
        [
            r"\bsk-[A-Za-z0-9_-]{16,}",  # OpenAI (sk-, sk-proj-) and Anthropic (sk-ant-) keys
            r"\bgh[pousr]_[A-Za-z0-9]{20,}",  # GitHub tokens
            r"\bgithub_pat_[A-Za-z0-9_]{20,}",  # GitHub fine-grained tokens
            r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
            r"\bhf_[A-Za-z0-9]{20,}",  # Hugging Face tokens
            r"\bxox[abprs]-[A-Za-z0-9-]{10,}",  # Slack tokens
            r"\bAIza[0-9A-Za-z_-]{35}",  # Google API keys
            r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWTs
        ]
    )
)
_BEARER = re.compile(r"(\bbearer\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
# `api_key=...`, `"token": "..."`: a long hex/base64 value after a secret-sounding name.
_ASSIGNED = re.compile(
    r"""([\w.-]*(?:key|token|secret|password|passwd|credential)s?["']?\s*[:=]\s*["']?)([A-Za-z0-9+/_=-]{16,})""",
    re.IGNORECASE,
)


def watch_env(name: str) -> None:
    """Treat the value of env var `name` as a secret from now on, whatever its name (llm.api_key_env)."""
    _named_envs.add(name)


def secret_values() -> list[str]:
    """Values of the secret env vars set now, longest first (so a key containing another goes whole).

    Read at call time rather than cached: keys are set after import (dotenv, tests, a login), a stale
    cache would leak them, and scanning os.environ costs microseconds beside any write it guards.
    """
    values = {
        value
        for name, value in os.environ.items()
        if (name in _named_envs or (_SECRET_ENV_NAME.search(name) and not _NOT_A_VALUE.search(name)))
        and len(value) >= MIN_SECRET_CHARS
    }
    return sorted(values, key=len, reverse=True)


def _mask_assigned(match: re.Match[str]) -> str:
    value = match[2]
    # A real secret of 16+ characters has a digit; 'val/loss_epoch' or 'model_name' do not.
    return match[1] + MASK if any(c.isdigit() for c in value) else match[0]


def redact(text: str) -> str:
    """`text` with the secret env values and token-shaped strings replaced by [REDACTED]."""
    for value in secret_values():
        text = text.replace(value, MASK)
    text = _TOKENS.sub(MASK, text)
    text = _BEARER.sub(lambda m: m[1] + MASK, text)
    return _ASSIGNED.sub(_mask_assigned, text)


def redact_data(obj: Any) -> Any:
    """A copy of JSON-like data (dicts, lists, tuples, strings) with every string redacted."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_data(key): redact_data(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_data(item) for item in obj)
    return obj


class RedactingFilter(logging.Filter):
    """Redacts a record's message and traceback; add it to each handler (`handler.addFilter(...)`).

    On a handler it sees every record the handler writes, propagated ones included; on a logger it
    would miss the records of child loggers.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info:
            # Format the traceback now, redacted, so that no handler renders the original.
            record.exc_text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
