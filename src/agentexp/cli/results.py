"""Commands over the record: leaderboard, report, test scoring, reproduce, audit, finish-up, reset, data."""

from __future__ import annotations

from pathlib import Path

import typer

from agentexp.cli.app import (
    EXPERIMENT,
    MISSION,
    STORE_URI,
    TOP_K,
    USER_ERRORS,
    WORKSPACE,
    _fail,
    _source,
    app,
)
from agentexp.finishup import FinishUpError
from agentexp.workspace import Workspace, WorkspaceError


@app.command()
def report(
    top_k: int = TOP_K,
    workspace: Path = WORKSPACE,
    uri: str | None = STORE_URI,
    experiment: str | None = EXPERIMENT,
    mission: str | None = MISSION,
) -> None:
    """Leaderboard, condensed story and paper-style report from MLflow, into <workspace>/artifacts/."""
    from agentexp import report as final

    try:
        files = final.write_report(_source(uri, experiment, mission), top_k, Workspace(workspace.resolve()))
    except (final.ReportError, *USER_ERRORS) as err:
        raise _fail(err) from None
    typer.echo("\n".join(str(path) for path in files))


@app.command()
def leaderboard(
    top_k: int = TOP_K,
    uri: str | None = STORE_URI,
    experiment: str | None = EXPERIMENT,
    mission: str | None = MISSION,
) -> None:
    """Print the top-k configurations (seed runs aggregated) as a Markdown table."""
    from agentexp import report as final
    from agentexp.ranking import markdown_table

    try:
        found = final.board(_source(uri, experiment, mission), top_k)
    except (final.ReportError, *USER_ERRORS) as err:
        raise _fail(err) from None
    typer.echo(markdown_table(found.entries), nl=False)
    if found.note:
        typer.echo(f"\n{found.note}")


TEST_DATA = typer.Option(
    None, "--data", help="an image folder, or a CSV in the run's column layout (default: its test data)"
)


@app.command()
def evaluate(
    run_id: str,
    data: Path | None = TEST_DATA,
    uri: str | None = STORE_URI,
) -> None:
    """Score a training's logged checkpoint on held-out test data; log test_<metric> on the run."""
    from agentexp import evaluate as heldout
    from agentexp import report as final

    try:
        found = heldout.evaluate(_source(uri, None).uri, run_id, data)
    except (heldout.EvaluateError, final.ReportError, *USER_ERRORS) as err:
        raise _fail(err) from None
    typer.echo(f"run {run_id}: {found.metric} = {found.value:.4f} (logged on the run)")


TOLERANCE = typer.Option(0.01, "--tolerance", min=0, help="largest accepted |diff| of best_<metric>")
REPO = typer.Option(Path("."), "--repo", help="the project's git checkout (holds the recorded commit)")
DATA_PATH = typer.Argument(..., help="your dataset's folder (or file)")


@app.command()
def reproduce(
    run_id: str, tolerance: float = TOLERANCE, repo: Path = REPO, uri: str | None = STORE_URI
) -> None:
    """Rerun a training from its recorded provenance as an audit run; exit 1 unless it matches."""
    from agentexp import audit
    from agentexp import report as final
    from agentexp.provenance import CheckoutError

    try:
        result = audit.reproduce(_source(uri, None).uri, run_id, repo, tolerance)
    except (audit.AuditError, CheckoutError, final.ReportError, *USER_ERRORS) as err:
        raise _fail(err) from None
    typer.echo("\n".join(result.lines()))
    if not result.ok:
        raise typer.Exit(1)


@app.command("audit")
def audit_runs(uri: str | None = STORE_URI, experiment: str | None = EXPERIMENT) -> None:
    """List finished training runs lacking provenance needed to reproduce them; exit 1 when any do."""
    from agentexp import audit
    from agentexp import report as final

    try:
        source = _source(uri, experiment)
        total, lines = audit.audit(source.uri, source.experiment)
    except (audit.AuditError, final.ReportError, *USER_ERRORS) as err:
        raise _fail(err) from None
    if not lines:
        typer.echo(f"all {total} training runs are reproducible")
        return
    typer.echo("\n".join([*lines, f"{len(lines)} of {total} training runs cannot be reproduced"]))
    raise typer.Exit(1)


@app.command()
def reset(
    keep_login: bool = typer.Option(False, "--keep-login", help="keep the Codex login (codex_home/)"),
    keep_data_link: bool = typer.Option(False, "--keep-data-link", help="keep the data link"),
    purge: bool = typer.Option(False, "--purge", help="delete, not archive; delete the experiment's runs"),
    workspace: Path = WORKSPACE,
    uri: str | None = STORE_URI,
    experiment: str | None = EXPERIMENT,
) -> None:
    """Start fresh: move the workspace to <workspace>_archive/<UTC time>/ (or delete it with --purge)."""
    from agentexp import report as final
    from agentexp import reset as fresh

    try:
        store = None
        if purge:
            source = _source(uri, experiment)
            store = (source.uri, source.experiment)
        lines = fresh.reset(Workspace(workspace.resolve()), keep_login, keep_data_link, purge, store)
    except (final.ReportError, *USER_ERRORS) as err:
        raise _fail(err) from None
    typer.echo("\n".join(lines))


@app.command("link-data")
def link_data(path: Path = DATA_PATH, workspace: Path = WORKSPACE) -> None:
    """Make <workspace>/data a link to your dataset (data presets may refer to it)."""
    ws = Workspace(workspace.resolve())
    try:
        target = ws.link_data(path)
    except WorkspaceError as err:
        raise _fail(err) from None
    typer.echo(f"{ws.data_link} -> {target}")


WHEN = "when to activate finish-up (only one of the two)"


@app.command()
def finishup(
    minutes_left: float | None = typer.Option(None, help="minutes from activation to the deadline (60)"),
    run_hours: float | None = typer.Option(None, help="deadline this many hours from now"),
    activate_in_minutes: float | None = typer.Option(None, help=WHEN),
    activate_at_utc: str | None = typer.Option(None, help=WHEN + ", e.g. 2026-12-01T22:00:00Z"),
    final_training_rounds: int = typer.Option(1, min=0, help="rounds of extra seed runs for the top-k"),
    top_k: int | None = typer.Option(
        None, min=1, help="candidates that get seed runs; leaderboard rows (10)"
    ),
    seeds_per_candidate: int = typer.Option(3, min=1, help="seed runs each top-k candidate ends with"),
    note: str = typer.Option("", help="shown with the deadline in the agents' prompts"),
    show: bool = typer.Option(False, "--show", help="print the schedule"),
    cancel: bool = typer.Option(False, "--cancel", help="cancel the schedule"),
    force_report_now: bool = typer.Option(False, "--force-report-now", help="report now, no final training"),
    workspace: Path = WORKSPACE,
    uri: str | None = STORE_URI,
    experiment: str | None = EXPERIMENT,
    mission: str | None = MISSION,
) -> None:
    """Schedule finish-up: once active the loop reruns the top candidates with more seeds, reports, stops."""
    from datetime import UTC, datetime

    from agentexp import finisher, finishup
    from agentexp import report as final

    ws, now = Workspace(workspace.resolve()), datetime.now(UTC)
    try:
        if show:
            f = finisher.load(ws)
            typer.echo(finishup.describe(f, now) if f else "no finish-up scheduled")
        elif cancel:
            typer.echo(finisher.cancel(ws))
        elif force_report_now:
            done = finisher.force_report(ws, _source(uri, experiment, mission), top_k, now)
            typer.echo("\n".join(done.report_files))
            if (pid := ws.holder_pid()) is not None:
                ws.request_stop()
                typer.echo(f"the running loop (pid {pid}) was asked to stop")
        else:
            when = (minutes_left, run_hours, activate_in_minutes, activate_at_utc)
            f = finishup.schedule(now, *when, final_training_rounds, top_k or 10, seeds_per_candidate, note)
            finisher.save(ws.create(), f)
            typer.echo(finishup.describe(f, now))
    except (FinishUpError, final.ReportError, *USER_ERRORS) as err:
        raise _fail(err) from None
