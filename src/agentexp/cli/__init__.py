"""The `agentexp` command line: composes the config, builds the components, runs the loop and its tools."""

# Importing the command modules registers their commands, the session's first (`agentexp --help` order).
from agentexp.cli import session  # noqa: F401, I001
from agentexp.cli import results  # noqa: F401
from agentexp.cli.app import _schedule, app
from agentexp.cli.session import build_loop

__all__ = ["_schedule", "app", "build_loop"]
