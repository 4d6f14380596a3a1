"""`python -m agentexp` runs the CLI."""

from agentexp.cli import app

app(prog_name="agentexp")
