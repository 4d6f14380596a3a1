"""Training slots: trainings per hour of the offline-planner loop with executor.max_concurrent=2 vs 1 on CPU.

Each arm runs `agentexp loop` (planner worker, no mentor, seconds-long trainings) for the same wall time
into its own store and workspace, lets its last trainings finish, and counts the trainings that finished
per hour of the whole run; also the most trainings that ran at once. The machine's load average is
printed before and after: on a shared machine the ratio says as much about the neighbours as the slots.
Usage: python bench/slots.py [--minutes 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from agentexp import tracking

ROOT = Path(__file__).resolve().parents[1]
SHORT = "loop.train_overrides=['trainer.epochs=1','debug=fast','data.image_size=16']"


def arm(slots: int, minutes: float, folder: Path) -> dict:
    """One loop session with `slots` training slots; its trainings per hour and peak concurrency."""
    uri = f"sqlite:///{folder / f'slots{slots}' / 'mlflow.db'}"
    args = [
        "mentor.enabled=false",
        "code.enabled=false",  # knob decisions only: no incumbent branch in this checkout
        f"executor.max_concurrent={slots}",
        f"loop.run_hours={minutes / 60}",
        "loop.max_cycles=100000",
        "loop.poll_seconds=0.5",
        "executor.monitor_seconds_default=2",
        f"loop.workspace={folder / f'slots{slots}' / 'ws'}",
        SHORT,
    ]
    env = os.environ | {tracking.ENV_URI: uri, tracking.ENV_EXPERIMENT: "bench-slots"}
    began = time.monotonic()
    subprocess.run([sys.executable, "-m", "agentexp", "loop", "-q", *args], cwd=ROOT, env=env, check=True)
    elapsed = time.monotonic() - began
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bench-slots")
    runs = client.search_runs([experiment.experiment_id], f"tags.`{tracking.KIND}` = 'train'")
    done = [r for r in runs if r.info.status == "FINISHED"]
    spans = [(r.info.start_time, r.info.end_time or r.info.start_time) for r in runs]
    peak = max((sum(s <= t < e for s, e in spans) for t, _ in spans), default=0)
    return {"finished": len(done), "elapsed_s": elapsed, "per_hour": len(done) / elapsed * 3600, "peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="wall time of each arm's loop")
    opts = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="agentexp-bench-slots-") as tmp:
        one, two = (arm(slots, opts.minutes, Path(tmp)) for slots in (1, 2))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for name, found in (("1 slot", one), ("2 slots", two)):
        print(
            f"{name}: {found['finished']} trainings finished in {found['elapsed_s']:.0f} s = "
            f"{found['per_hour']:.0f}/h, at most {found['peak']} at once"
        )
    print(f"ratio 2 slots / 1 slot: {two['per_hour'] / one['per_hour']:.2f}")


if __name__ == "__main__":
    main()
