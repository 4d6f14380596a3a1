"""The trainer end to end: what a training leaves in MLflow, data kinds, run status on failure and kill."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import TINY, compose_train, write_image

from agentexp import tracking
from trainers.data import load_split
from trainers.model import Classifier
from trainers.train import SUMMARY_PREFIX, TrainingInterrupted, train


def run_tiny(tmp_path, overrides: list[str]) -> dict:
    cfg = compose_train(TINY + overrides)
    return train(cfg, tmp_path / "run", TINY + overrides)


def test_digits_run_records_params_metrics_artifacts_and_provenance(tmp_path, store, capsys):
    summary = run_tiny(tmp_path, ["optim.lr=0.002"])
    (run,) = store.runs("train")
    assert run.info.status == "FINISHED"
    assert run.info.run_id == summary["run_id"]
    assert run.data.params["optim.lr"] == "0.002" and run.data.params["model.name"] == "resnet18"
    assert [k for k in run.data.metrics if k.startswith("best_")] == ["best_val_acc"]
    assert run.data.metrics["best_val_acc"] == pytest.approx(summary["best"])
    history = store.client.get_metric_history(run.info.run_id, "val_acc")
    assert [m.step for m in history] == [0, 1]
    assert max(m.value for m in history) == pytest.approx(summary["best"])
    assert len(store.client.get_metric_history(run.info.run_id, "train_loss")) == 2
    artifacts = {
        a.path for d in ("config", "evaluation") for a in store.client.list_artifacts(run.info.run_id, d)
    }
    assert artifacts == {
        "config/resolved.yaml",
        "config/overrides.txt",
        "evaluation/confusion_matrix.png",
        "evaluation/per_class_report.json",
    }
    tags = run.data.tags
    assert tags[tracking.KIND] == "train"
    assert json.loads(tags[tracking.OVERRIDES]) == TINY + ["optim.lr=0.002"]
    assert tags[tracking.SEED] == "42" and tags[tracking.DEVICE] == "cpu"
    assert len(tags[tracking.DATA_FINGERPRINT]) == 16 and len(tags[tracking.DATA_SPLIT]) == 16
    assert tags[f"{tracking.VERSION_PREFIX}torch"][0].isdigit()
    assert tags[tracking.GIT_STATUS]  # "ok" in a checkout, the reason elsewhere
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith(SUMMARY_PREFIX)][-1]
    assert json.loads(line.removeprefix(SUMMARY_PREFIX))["run_id"] == run.info.run_id


@pytest.mark.parametrize("data", [[], ["data=csv"]], ids=["digits", "csv-groups"])
def test_the_validation_split_is_fixed_by_its_own_seed_not_the_training_seed(tmp_path, data):
    if data:  # 40 patients of 3 images each: a grouped split
        rows = ["file,label,patient"]
        for i in range(120):
            rows.append(f"{write_image(tmp_path / f'{i}.png', (i, 0, 0)).name},{'ab'[i % 2]},p{i // 3}")
        (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
        data = [
            "data=csv",
            f"data.csv_path={tmp_path / 'labels.csv'}",
            "data.path_column=file",
            "data.group_column=patient",
        ]
    splits = [load_split(compose_train([*data, f"trainer.seed={seed}"])) for seed in (1, 2)]
    assert splits[0].val_fingerprint == splits[1].val_fingerprint
    assert [str(x) for x in splits[0].val_labels] == [str(x) for x in splits[1].val_labels]
    moved = load_split(compose_train([*data, "trainer.seed=1", "data.split_seed=7"]))
    assert moved.val_fingerprint != splits[0].val_fingerprint


def test_same_seed_gives_same_metric(tmp_path, store):
    first = run_tiny(tmp_path, [])
    second = run_tiny(tmp_path, [])
    assert first["best"] == second["best"]
    assert first["run_id"] != second["run_id"]


def test_run_nests_under_parent_from_environment(tmp_path, store, monkeypatch):
    experiment_id = tracking.ensure_store(store.uri, "test")
    parent = store.client.create_run(experiment_id, tags={tracking.KIND: "decision"})
    monkeypatch.setenv(tracking.ENV_PARENT, parent.info.run_id)
    monkeypatch.setenv(tracking.ENV_TRACE, "cycle-7-abc")
    run_tiny(tmp_path, [])
    (run,) = store.runs("train")
    assert run.data.tags[tracking.PARENT_RUN_ID] == parent.info.run_id
    assert run.data.tags[tracking.CYCLE_TRACE_ID] == "cycle-7-abc"


def test_image_folder_trains_and_learns_colours(tmp_path, store, image_folder):
    summary = run_tiny(
        tmp_path,
        [
            "data=imagefolder",
            f"data.root={image_folder}",
            "data.num_workers=0",
            "data.batch_size=8",
            "trainer.epochs=3",
        ],
    )
    (run,) = store.runs("train")
    assert run.info.status == "FINISHED" and run.data.params["data.kind"] == "imagefolder"
    assert summary["best"] > 0.34  # better than chance on three classes


def test_image_folder_with_train_val_split(tmp_path, image_folder):
    for name in ("red", "green", "blue"):
        write_image(tmp_path / "split" / "train" / name / "a.png", (1, 2, 3))
        write_image(tmp_path / "split" / "train" / name / "b.png", (1, 2, 3))
        write_image(tmp_path / "split" / "val" / name / "c.png", (1, 2, 3))
    split = load_split(compose_train(["data=imagefolder", f"data.root={tmp_path / 'split'}"]))
    assert len(split.train) == 6 and len(split.val) == 3
    assert split.class_names == ["blue", "green", "red"]


def test_csv_group_split_keeps_each_patient_on_one_side(tmp_path, store):
    rows = []
    for patient in range(12):
        for view in range(3):
            path = write_image(tmp_path / "xr" / f"p{patient}_{view}.png", (patient * 20, 0, 0))
            rows.append(
                {"file": path.name, "finding": "sick" if patient % 2 else "healthy", "patient": f"P{patient}"}
            )
    table = tmp_path / "xr" / "labels.csv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["file", "finding", "patient"])
        writer.writeheader()
        writer.writerows(rows)
    overrides = [
        "data=csv",
        f"data.csv_path={table}",
        "data.path_column=file",
        "data.label_column=finding",
        "data.group_column=patient",
        "data.val_fraction=0.25",
    ]
    split = load_split(compose_train(overrides))
    patient = {tmp_path / "xr" / r["file"]: r["patient"] for r in rows}
    train_patients = {patient[p] for p in split.train}
    val_patients = {patient[p] for p in split.val}
    assert train_patients and val_patients and not train_patients & val_patients
    assert len(split.train) + len(split.val) == 36
    run_tiny(tmp_path, overrides + ["data.num_workers=0", "data.batch_size=8"])
    (run,) = store.runs("train")
    assert run.info.status == "FINISHED"


def test_exception_during_training_ends_run_failed(tmp_path, store, monkeypatch):
    def broken_step(self, batch, index):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(Classifier, "training_step", broken_step)
    with pytest.raises(RuntimeError, match="injected fault"):
        run_tiny(tmp_path, [])
    (run,) = store.runs("train")
    assert run.info.status == "FAILED"


def test_timeout_ends_run_killed(tmp_path, store):
    with pytest.raises(TrainingInterrupted, match="timeout"):
        run_tiny(tmp_path, ["trainer.timeout_s=1.5", "trainer.epochs=200", "trainer.limit_train_batches=1.0"])
    (run,) = store.runs("train")
    assert run.info.status == "KILLED"
