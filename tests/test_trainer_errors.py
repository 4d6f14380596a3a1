"""Bad input to the trainer: one clear sentence each, and no MLflow run left behind for it."""

from __future__ import annotations

import pytest
from helpers import TINY, compose_train, write_image

from trainers.config import UserError
from trainers.train import train


def fails_with(tmp_path, overrides: list[str]) -> str:
    with pytest.raises(UserError) as err:
        train(compose_train(TINY + overrides), tmp_path / "run", overrides)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_data_root(tmp_path, store):
    message = fails_with(tmp_path, ["data=imagefolder", f"data.root={tmp_path / 'nowhere'}"])
    assert message == f"data.root {tmp_path / 'nowhere'} does not exist or is not a folder"
    assert store.runs() == []


def test_data_root_required():
    with pytest.raises(UserError, match=r"Missing required config value data.root"):
        compose_train(["data=imagefolder"])


def test_empty_data_root(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "has no class folders" in fails_with(
        tmp_path, ["data=imagefolder", f"data.root={tmp_path / 'empty'}"]
    )


def test_class_folder_without_images(tmp_path, image_folder):
    (image_folder / "purple").mkdir()
    (image_folder / "purple" / "notes.txt").write_text("not an image")
    message = fails_with(tmp_path, ["data=imagefolder", f"data.root={image_folder}"])
    assert message.startswith(f"class folder {image_folder / 'purple'} has no images")


def test_unreadable_images_are_skipped_and_counted(tmp_path, image_folder, store, caplog):
    (image_folder / "red" / "broken.png").write_bytes(b"not a png")
    cfg = compose_train(
        TINY
        + ["data=imagefolder", f"data.root={image_folder}", "data.num_workers=0", "data.max_bad_fraction=0.1"]
    )
    train(cfg, tmp_path / "run", [])
    (run,) = store.runs("train")
    assert run.data.tags["agentexp.data.skipped_images"] == "1"
    assert "skipped 1 unreadable image(s) of 25" in caplog.text


def test_too_many_unreadable_images_fail(tmp_path, image_folder):
    for i in range(5):
        (image_folder / "red" / f"broken{i}.png").write_bytes(b"\x89PNG truncated")
    message = fails_with(tmp_path, ["data=imagefolder", f"data.root={image_folder}"])
    assert message.startswith("5 of 29 images in") and "max_bad_fraction=0.05" in message


def test_unknown_model_lists_close_matches(tmp_path, store):
    message = fails_with(tmp_path, ["model.name=resnet181"])
    assert message.startswith("Unsupported model.name 'resnet181'")
    assert "resnet18" in message
    assert store.runs() == []


def test_metric_not_valid_for_classification():
    with pytest.raises(UserError, match=r"metric.name 'mse' is not valid for image classification"):
        compose_train(["metric.name=mse"])


def test_pretrained_without_local_checkpoint():
    with pytest.raises(UserError, match="weights are never downloaded"):
        compose_train(["model.pretrained=true"])


def test_csv_missing_column(tmp_path):
    write_image(tmp_path / "a.png", (1, 1, 1))
    table = tmp_path / "labels.csv"
    table.write_text("path,diagnosis\na.png,x\n")
    message = fails_with(tmp_path, ["data=csv", f"data.csv_path={table}"])
    assert message == f"{table} has no column 'label' (columns: path, diagnosis)"


def test_a_signal_wrapped_in_a_library_error_is_still_an_interruption():
    from mlflow.exceptions import MlflowException

    from trainers.train import TrainingInterrupted, _interruption

    stop = TrainingInterrupted("received SIGTERM", 143)
    try:
        try:
            raise stop
        except TrainingInterrupted as inner:
            raise MlflowException("received SIGTERM") from inner
    except MlflowException as wrapped:
        assert _interruption(wrapped) is stop
    assert _interruption(ValueError("a real crash")) is None
