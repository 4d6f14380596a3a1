#!/usr/bin/env bash
# The slurm-marked tests on a local one-node cluster: ci.sh [--strict] [pytest args].
# Brings the cluster up unless it is up, and down again if it brought it up. When it cannot (not root,
# no apt, the daemons do not start) it says why in one line and exits 0, or 1 with --strict (make test-slurm).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
strict=0
if [[ ${1:-} == --strict ]]; then strict=1; shift; fi

not_run() {
  echo "slurm tests not run: $*"
  exit $strict
}

cluster=tests/slurm/cluster.sh
if ! $cluster status >/dev/null 2>&1; then
  [[ $(id -u) == 0 ]] || not_run "bringing up a local cluster needs root"
  command -v apt-get >/dev/null || command -v slurmctld >/dev/null || not_run "no apt-get to install slurm-wlm"
  log=$(mktemp)
  $cluster up >"$log" 2>&1 || not_run "the local cluster did not come up: $(tail -n 1 "$log")"
  trap '$cluster down >/dev/null' EXIT
fi
"$PY" -m pytest -m slurm -q "$@"
