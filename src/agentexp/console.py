"""What `agentexp loop` prints: logging set up once (one line per cycle), and the closing summary."""

from __future__ import annotations

import logging
import sys

from agentexp import ranking, tracking
from agentexp.redact import RedactingFilter

QUIET_LIBRARIES = ("mlflow", "alembic", "optuna", "urllib3", "httpx", "git")
TOP = 3


def setup(quiet: bool) -> None:
    """agentexp's INFO lines (each cycle's) on stderr, through rich on a terminal and as plain timestamped
    lines in a file (a daemon's log, CI), which rich would wrap at 80 columns; -q keeps only warnings."""
    from rich.logging import RichHandler

    if sys.stderr.isatty():
        handler: logging.Handler = RichHandler(show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("agentexp").setLevel(logging.WARNING if quiet else logging.INFO)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)


def closing(src: tracking.Source, rows: list[dict], workspace: str, report_files: list[str]) -> list[str]:
    """The top 3 configurations with their run ids, where the report is, and how to open the MLflow UI."""
    lines = [f"top {TOP} by {src.metric} ({src.direction}):"]
    entries = ranking.rank(rows, src.metric, src.direction, TOP)
    for e in entries:
        lines.append(f"  {e.rank}. {e.run_label}  {e.metric_text()}  run {e.run_id}")
    if not entries:
        lines.append("  no training finished with a metric yet")
    if report_files:
        lines.append(f"report: {report_files[0].rsplit('/', 1)[0]}/ ({len(report_files)} files)")
    else:
        lines.append(f"report: agentexp report --workspace {workspace}  (or make report)")
    lines.append("MLflow UI: make ui  (agentexp ui --port 5000), then open the runs page it prints")
    return lines
