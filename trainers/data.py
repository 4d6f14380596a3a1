"""Datasets and the DataModule for the three data kinds: digits, image folders, CSV files."""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from sklearn.datasets import load_digits
from sklearn.model_selection import GroupShuffleSplit, train_test_split
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision.transforms import v2

from agentexp import tracking
from agentexp.provenance import fingerprint
from trainers import recipe
from trainers.config import CsvData, DigitsData, ImageFolderData, TrainConfig, UserError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
TEST_FOLDER = tracking.TEST_FOLDER
"""An image folder's held-out test data (root/test/<class>/...): never a class, never trained on."""


@dataclass(frozen=True)
class Split:
    """Train and validation samples: a tensor of uint8 images or a list of image paths, with labels."""

    train: torch.Tensor | list[Path]
    train_labels: list[int]
    val: torch.Tensor | list[Path]
    val_labels: list[int]
    class_names: list[str]
    fingerprint: str
    """The data: every sample and its label."""
    skipped_images: int = 0
    val_fingerprint: str = ""
    """Which samples are in the validation split: runs are only compared on the same one."""


class TensorImages(Dataset):
    def __init__(self, images: torch.Tensor, labels: list[int], transform: v2.Transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), self.labels[i]


class FileImages(Dataset):
    def __init__(self, paths: list[Path], labels: list[int], transform: v2.Transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), self.labels[i]


def load_split(cfg: TrainConfig) -> Split:
    """Read and split the configured data; every problem a user can fix is a UserError.

    The split has its own seed (data.split_seed), never the training seed: runs with other training seeds
    are scored on the same validation samples."""
    data = cfg.data
    seed = data.split_seed
    if isinstance(data, DigitsData):
        return _digits(data.image_size, data.val_fraction, seed)
    if isinstance(data, ImageFolderData):
        return _image_folder(data, seed)
    return _csv(data, seed)


def _digits(size: int, val_fraction: float, seed: int) -> Split:
    digits = load_digits()
    pixels = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)
    pixels = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    images = pixels.clamp(0, 1).mul(255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    labels = digits.target.tolist()
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, stratify=labels, random_state=seed
    )
    return Split(
        train=images[train_idx],
        train_labels=[labels[i] for i in train_idx],
        val=images[val_idx],
        val_labels=[labels[i] for i in val_idx],
        class_names=[str(c) for c in digits.target_names],
        fingerprint=fingerprint([b"digits", digits.images.tobytes(), digits.target.tobytes()]),
        val_fingerprint=fingerprint([b"digits-val", *(str(i) for i in sorted(val_idx))]),
    )


def _image_folder(data: ImageFolderData, seed: int) -> Split:
    root = data.root.expanduser()
    if not root.is_dir():
        raise UserError(f"data.root {root} does not exist or is not a folder")
    if (root / "train").is_dir() and (root / "val").is_dir():
        train_paths, train_labels, names = _scan_classes(root / "train")
        val_paths, val_labels, val_names = _scan_classes(root / "val", names)
        samples = (train_paths, train_labels, val_paths, val_labels)
    else:
        paths, labels, names = _scan_classes(root, skip=(TEST_FOLDER,))
        samples = _stratified(paths, labels, data.val_fraction, seed)
    return _readable_split(*samples, names, data.max_bad_fraction, root)


def _scan_classes(
    root: Path, expected: list[str] | None = None, skip: tuple[str, ...] = ()
) -> tuple[list[Path], list[int], list[str]]:
    names = sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in skip
    )
    if not names:
        raise UserError(f"data.root {root} has no class folders (expected one folder per class)")
    if expected is not None and names != expected:
        raise UserError(f"{root} has classes {names}, but the train folder has {expected}")
    paths, labels = [], []
    for label, name in enumerate(names):
        found = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise UserError(f"class folder {root / name} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        paths += found
        labels += [label] * len(found)
    return paths, labels, names


def _csv_rows(path: Path, needed: list[str], what: str = "data.csv_path") -> list[dict[str, str]]:
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise UserError(f"{path} has no rows")
    missing = [c for c in needed if c not in rows[0]]
    if missing:
        raise UserError(f"{path} has no column {missing[0]!r} (columns: {', '.join(rows[0])})")
    return rows


def _csv(data: CsvData, seed: int) -> Split:
    needed = [data.path_column, data.label_column] + ([data.group_column] if data.group_column else [])
    rows = _csv_rows(data.csv_path, needed)
    image_root = data.image_root or data.csv_path.parent
    names = sorted({row[data.label_column] for row in rows})
    paths = [image_root / row[data.path_column] for row in rows]
    labels = [names.index(row[data.label_column]) for row in rows]
    if data.group_column:
        groups = [row[data.group_column] for row in rows]
        splitter = GroupShuffleSplit(n_splits=1, test_size=data.val_fraction, random_state=seed)
        train_idx, val_idx = next(splitter.split(paths, labels, groups))
        samples = _take(paths, labels, train_idx) + _take(paths, labels, val_idx)
    else:
        samples = _stratified(paths, labels, data.val_fraction, seed)
    return _readable_split(*samples, names, data.max_bad_fraction, data.csv_path)


def test_source(cfg: TrainConfig) -> Path | None:
    """The configured held-out test data: root/test of an image folder, data.test_csv_path of a CSV."""
    data = cfg.data
    if isinstance(data, ImageFolderData):
        folder = data.root.expanduser() / TEST_FOLDER
        return folder if folder.is_dir() else None
    return data.test_csv_path if isinstance(data, CsvData) else None


def load_test(cfg: TrainConfig, path: Path, class_names: list[str]) -> tuple[list[Path], list[int], str]:
    """Held-out samples at `path` labelled in the training's class order, and their fingerprint: an image
    folder (one folder per class) or, for a run on data=csv, a CSV in the run's column layout."""
    if path.is_dir():
        paths, labels, names = _scan_classes(path)
        labels = [_label(names[y], class_names, path) for y in labels]
    elif isinstance(cfg.data, CsvData):
        data = cfg.data
        rows = _csv_rows(path, [data.path_column, data.label_column], "test data")
        image_root = data.image_root or path.parent
        paths = [image_root / row[data.path_column] for row in rows]
        labels = [_label(row[data.label_column], class_names, path) for row in rows]
    else:
        raise UserError(f"{path} is not an image folder (a CSV needs a run trained on data=csv)")
    paths, labels, bad = _readable(paths, labels)
    if not paths:
        raise UserError(f"{path} has no readable test images")
    if bad:
        log.warning("skipped %d unreadable test image(s) in %s", bad, path)
    parts = sorted(
        f"{p.parent.name}/{p.name}:{p.stat().st_size}:{y}" for p, y in zip(paths, labels, strict=True)
    )
    return paths, labels, fingerprint(parts)


def _label(name: str, class_names: list[str], source: Path) -> int:
    if name not in class_names:
        raise UserError(
            f"{source} has class {name!r}, which the run was not trained on ({', '.join(class_names)})"
        )
    return class_names.index(name)


def _stratified(paths: list[Path], labels: list[int], val_fraction: float, seed: int) -> tuple:
    counts = Counter(labels)
    stratify = labels if min(counts.values()) >= 2 else None
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=val_fraction, stratify=stratify, random_state=seed
    )
    return _take(paths, labels, train_idx) + _take(paths, labels, val_idx)


def _take(paths: list[Path], labels: list[int], idx: np.ndarray) -> tuple[list[Path], list[int]]:
    return [paths[i] for i in idx], [labels[i] for i in idx]


def _readable_split(train, train_labels, val, val_labels, names, max_bad: float, source: Path) -> Split:
    """Drop unreadable images, counted; too many of them is an error rather than a silent loss."""
    train, train_labels, bad_train = _readable(train, train_labels)
    val, val_labels, bad_val = _readable(val, val_labels)
    skipped = bad_train + bad_val
    total = len(train) + len(val) + skipped
    if skipped:
        log.warning("skipped %d unreadable image(s) of %d in %s", skipped, total, source)
    if skipped > max_bad * total:
        raise UserError(
            f"{skipped} of {total} images in {source} are unreadable (more than max_bad_fraction={max_bad})"
        )
    if not train or not val:
        raise UserError(f"{source} leaves an empty {'train' if not train else 'validation'} split")
    parts = [
        f"{p.name}:{p.stat().st_size}:{y}"
        for p, y in zip(train + val, train_labels + val_labels, strict=True)
    ]
    members = sorted(f"{p.parent.name}/{p.name}:{y}" for p, y in zip(val, val_labels, strict=True))
    data, split = fingerprint(parts), fingerprint(members)
    return Split(train, train_labels, val, val_labels, names, data, skipped, split)


def _readable(paths: list[Path], labels: list[int]) -> tuple[list[Path], list[int], int]:
    keep_paths, keep_labels = [], []
    for path, label in zip(paths, labels, strict=True):
        try:
            with Image.open(path) as image:
                image.verify()
        except (OSError, UnidentifiedImageError, SyntaxError):
            continue
        keep_paths.append(path)
        keep_labels.append(label)
    return keep_paths, keep_labels, len(paths) - len(keep_paths)


class ImageDataModule(L.LightningDataModule):
    """Loaders over a Split; the balanced sampler draws with inverse class frequency."""

    def __init__(self, cfg: TrainConfig, split: Split):
        super().__init__()
        self.cfg, self.split = cfg, split
        dataset = TensorImages if isinstance(split.train, torch.Tensor) else FileImages
        self.train_set = dataset(split.train, split.train_labels, recipe.train_transform(cfg))
        self.val_set = dataset(split.val, split.val_labels, recipe.val_transform(cfg))

    @property
    def num_classes(self) -> int:
        return len(self.split.class_names)

    def class_weights(self) -> torch.Tensor:
        """Inverse class frequency of the training labels, mean 1."""
        counts = torch.bincount(torch.tensor(self.split.train_labels), minlength=self.num_classes).float()
        weights = counts.sum() / counts.clamp(min=1)
        return weights / weights.mean()

    def train_dataloader(self) -> DataLoader:
        sampler = None
        if self.cfg.data.balanced_sampler:
            per_sample = self.class_weights()[torch.tensor(self.split.train_labels)]
            generator = torch.Generator().manual_seed(self.cfg.trainer.seed)
            sampler = WeightedRandomSampler(
                per_sample, len(per_sample), replacement=True, generator=generator
            )
        # a last batch of one image breaks BatchNorm; drop partial batches unless that empties the epoch
        drop_last = len(self.train_set) > self.cfg.data.batch_size
        return self._loader(self.train_set, shuffle=sampler is None, sampler=sampler, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def _loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        workers = self.cfg.data.num_workers
        return DataLoader(
            dataset,
            batch_size=self.cfg.data.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            **kwargs,
        )
