"""What many tests share: tiny trainer overrides, scripted LLM answers, the loop as the CLI builds it."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from PIL import Image

from agentexp.cli import build_loop
from agentexp.config import compose_loop
from trainers.config import CONF_DIR, TrainConfig, from_hydra

TINY = ["debug=fast", "data.image_size=16"]
"""Overrides for a seconds-long CPU run."""
FAST_TRAINING = "loop.train_overrides=['trainer.epochs=1','debug=fast','data.image_size=16']"
"""Every loop training a seconds-long one."""


def compose_train(overrides: list[str]) -> TrainConfig:
    """The real trainer config, composed and validated as the app does."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        return from_hydra(compose("train", overrides=overrides))


@functools.cache
def digits_split() -> str:
    """The validation split a tiny digits training tags: hand-logged runs that should rank with real ones
    carry it."""
    from trainers.data import load_split

    return load_split(compose_train(TINY)).val_fingerprint


def write_image(path: Path, color: tuple[int, int, int], size: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)
    return path


def decision(action: str = "train", **fields) -> str:
    """A worker answer as the LLM would send it (JSON text); a train decision unless told otherwise."""
    base = {
        "action": action,
        "rationale": "resnet18 at lr 2e-3 is the baseline every later change is compared with",
        "monitor_seconds": 120,
    }
    if action == "train":
        base |= {
            "run_label": "resnet18-lr2e-3",
            "overrides": ["optim.lr=0.002"],
            "strategy_dimension": "optimization",
        }
    return json.dumps(base | fields)


def write_script(path: Path, raws: list[str]) -> Path:
    """A scripted backend's JSONL file: one {"raw": ...} line per call."""
    path.write_text("".join(json.dumps({"raw": raw}) + "\n" for raw in raws))
    return path


def loop_overrides(tmp_path: Path, raws: list[str], *extra: str) -> list[str]:
    """`agentexp loop` overrides for a scripted worker, no mentor, seconds-long trainings, in tmp_path."""
    return [
        "llm=scripted",
        f"llm.script={write_script(tmp_path / 'worker.jsonl', raws)}",
        "mentor.enabled=false",
        f"loop.workspace={tmp_path / '.llm_loop'}",
        "loop.poll_seconds=0",
        FAST_TRAINING,
        *extra,
    ]


def scripted_loop(tmp_path: Path, raws: list[str], *extra: str):
    """The loop built as `agentexp loop` builds it, with a scripted worker (see loop_overrides)."""
    return build_loop(compose_loop(loop_overrides(tmp_path, raws, *extra)))


def run_loop(tmp_path: Path, raws: list[str], *extra: str):
    """Run a scripted loop; (why it stopped, its workspace)."""
    loop = scripted_loop(tmp_path, raws, *extra)
    return loop.run(), loop.ws


def wait_for(predicate, seconds: float = 10.0, what: str = "the condition", proc=None):
    """Poll `predicate` until it returns something truthy; fail after `seconds`, or at once when the
    process `proc` (a subprocess.Popen) exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if found := predicate():
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited with {proc.returncode} before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")
