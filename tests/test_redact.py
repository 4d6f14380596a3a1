"""The redactor: configured keys and token-shaped secrets go, ordinary text (run ids, metrics) stays."""

import io
import logging

import pytest

from agentexp.redact import MASK, RedactingFilter, redact, redact_data, watch_env

SECRETS = [
    "sk-" + "A1b2C3d4E5" * 3,
    "sk-proj-" + "x9" * 20,
    "sk-ant-api03-" + "Zy8_" * 10,
    "ghp_" + "a1" * 18,
    "github_pat_" + "11AB" * 8,
    "AKIAIOSFODNN7EXAMPLE",
    "hf_" + "Ab3" * 10,
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
]


@pytest.mark.parametrize("secret", SECRETS)
def test_token_shaped_secrets_are_removed(secret):
    assert (
        redact(f"HTTP 401: Incorrect API key provided: {secret}.")
        == f"HTTP 401: Incorrect API key provided: {MASK}."
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-123_xyz", f"Authorization: Bearer {MASK}"),
        ("api_key=0123456789abcdef0123", f"api_key={MASK}"),
        ('{"access_token": "Zm9vYmFyYmF6cXV4MTIzNDU2"}', f'{{"access_token": "{MASK}"}}'),
        ("client_secret: 9f8e7d6c5b4a39281706", f"client_secret: {MASK}"),
    ],
)
def test_bearer_tokens_and_assigned_secrets_keep_their_name(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "run 0123456789abcdef0123456789abcdef reached val/acc=0.91",  # MLflow run ids are 32 hex digits
        "max_tokens=2048, input_tokens: 1234",
        "monitor_key=val/loss_epoch_mean",
        "task-sk-is-not-a-key and risk-assessment-of-the-model",
        "optim.lr=1e-3 model=resnet18 aug=strong",
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert redact(text) == text


def test_secret_env_values_are_removed_whatever_their_shape(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "not-token-shaped-1")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "also plain words")
    monkeypatch.setenv("REDACT_TEST_NAMED_VAR", "named-in-api-key-env")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # too short to be a secret
    monkeypatch.setenv("HF_TOKEN_PATH", "/root/.cache/token")  # a place, not a secret
    text = "not-token-shaped-1 / also plain words / named-in-api-key-env / false / /root/.cache/token"
    assert redact(text) == f"{MASK} / {MASK} / named-in-api-key-env / false / /root/.cache/token"
    watch_env("REDACT_TEST_NAMED_VAR")  # what api_key() does for llm.api_key_env
    assert "named-in-api-key-env" not in redact(text)


def test_env_is_read_at_call_time(monkeypatch):
    assert redact("late-secret-value") == "late-secret-value"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "late-secret-value")
    assert redact("late-secret-value") == MASK


def test_redact_data_walks_nested_json():
    secret = SECRETS[0]
    data = {"error": f"key {secret}", "spans": [{"input": secret, "n": 3}, (secret, None)], secret: True}
    assert redact_data(data) == {
        "error": f"key {MASK}",
        "spans": [{"input": MASK, "n": 3}, (MASK, None)],
        MASK: True,
    }


def test_the_logging_filter_redacts_messages_arguments_and_tracebacks():
    secret = SECRETS[2]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("agentexp.test_redact")
    logger.addHandler(handler)
    try:
        logger.warning("server said %s", f"bad key {secret}")
        try:
            raise RuntimeError(f"Incorrect API key provided: {secret}")
        except RuntimeError:
            logger.exception("call failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert secret not in out
    assert f"server said bad key {MASK}" in out and f"RuntimeError: Incorrect API key provided: {MASK}" in out
