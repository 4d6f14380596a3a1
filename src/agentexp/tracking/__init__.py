"""MLflow conventions, the loop's record and the store's queries: inside agentexp only this package talks
to MLflow."""

from agentexp.tracking.names import *  # noqa: F403 - the tag and environment names are the API
from agentexp.tracking.store import (
    LOOP_DIRECTION,
    LOOP_METRIC,
    PAGE,
    Source,
    _search_table,
    artifact_paths,
    delete_experiment_runs,
    ensure_store,
    experiments,
    find_experiment,
    find_run_by_tag,
    get_run,
    locate,
    log_files,
    newest_run,
    prepare_store,
    read_json_artifact,
    read_text_artifact,
    run_table,
    set_tags,
)
from agentexp.tracking.tracker import Tracker

__all__ = [
    "LOOP_DIRECTION",
    "LOOP_METRIC",
    "PAGE",
    "Source",
    "Tracker",
    "_search_table",
    "artifact_paths",
    "delete_experiment_runs",
    "ensure_store",
    "experiments",
    "find_experiment",
    "find_run_by_tag",
    "get_run",
    "locate",
    "log_files",
    "newest_run",
    "prepare_store",
    "read_json_artifact",
    "read_text_artifact",
    "run_table",
    "set_tags",
]
