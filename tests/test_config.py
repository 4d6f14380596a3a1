"""compose_loop: an unknown config-group option is one sentence that lists the options there are."""

import pytest

from agentexp.config import ConfigError, compose_loop

BACKENDS = "anthropic, codex, openai, planner, scripted"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("llm=nonexistent", f"Unknown llm option 'nonexistent': choose one of {BACKENDS}"),
        (
            "mentor/llm=nope",
            f"Unknown mentor/llm option 'nope': choose one of {BACKENDS}",
        ),  # Hydra ignored it
        ("gate=strictest", "Unknown gate option 'strictest': choose one of default"),
    ],
)
def test_an_unknown_option_lists_the_options(override, message):
    with pytest.raises(ConfigError) as err:
        compose_loop([override])
    assert str(err.value) == message


def test_known_options_and_plain_keys_compose():
    cfg = compose_loop(
        ["llm=openai", "mentor/llm=codex", "llm.max_tokens=64", "llm.structured_output=json_object"]
    )
    assert (cfg.llm.name, cfg.mentor.llm.name, cfg.llm.max_tokens, cfg.llm.structured_output) == (
        "openai",
        "codex",
        64,
        "json_object",
    )
