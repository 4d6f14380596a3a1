"""The default recipe is today's trainer exactly: each builder against the explicit timm / torch calls for
the same config, and a training with the recipe against one with those explicit calls patched in."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from helpers import TINY, compose_train
from mlflow.tracking import MlflowClient
from torchvision.transforms import v2

from trainers import recipe
from trainers.config import UserError
from trainers.train import train

MIXED = ["aug=strong", "aug.mixup_alpha=0.2", "aug.cutmix_alpha=0.5", "aug.random_erasing=0.25"]


def explicit_model(cfg, num_classes):
    return timm.create_model(
        cfg.model.name, pretrained=False, num_classes=num_classes, drop_rate=cfg.model.drop_rate
    )


def explicit_transform(cfg, train: bool):
    size, aug = cfg.data.image_size, cfg.aug
    steps = [v2.ToImage(), v2.Resize((size, size), antialias=True)]
    if train:
        if aug.crop_scale:
            steps.append(v2.RandomResizedCrop(size, scale=aug.crop_scale, antialias=True))
        if aug.hflip > 0:
            steps.append(v2.RandomHorizontalFlip(aug.hflip))
        if aug.rotation > 0:
            steps.append(v2.RandomRotation(aug.rotation))
        if aug.trivial_augment:
            steps.append(v2.TrivialAugmentWide())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(cfg.data.mean, cfg.data.std)]
    if train and aug.random_erasing > 0:
        steps.append(v2.RandomErasing(p=aug.random_erasing))
    return v2.Compose(steps)


def explicit_mix(cfg, num_classes):
    mixes = [v2.MixUp(alpha=cfg.aug.mixup_alpha, num_classes=num_classes)] if cfg.aug.mixup_alpha else []
    if cfg.aug.cutmix_alpha:
        mixes.append(v2.CutMix(alpha=cfg.aug.cutmix_alpha, num_classes=num_classes))
    return v2.RandomChoice(mixes) if mixes else None


def explicit_loss(cfg, class_weights):
    weights = class_weights if cfg.loss.class_weights == "balanced" else None
    return torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.loss.label_smoothing)


def explicit_optimizer(cfg, params, total):
    o = cfg.optim
    if o.name == "sgd":
        opt = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.schedule == "onecycle":
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=o.lr, total_steps=total)
    warmup = o.warmup_epochs * total // cfg.trainer.epochs

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 if o.schedule == "constant" else 0.5 * (1 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


@pytest.mark.parametrize("overrides", [[], ["model=mobilenetv3_small_100", "model.drop_rate=0.2"]])
def test_the_model_builder_is_timm_create_model(overrides):
    cfg = compose_train(overrides)
    torch.manual_seed(3)
    built = recipe.build_model(cfg, 10).state_dict()
    torch.manual_seed(3)
    expected = explicit_model(cfg, 10).state_dict()
    assert built.keys() == expected.keys()
    assert all(torch.equal(built[k], expected[k]) for k in built)


def test_an_unknown_model_is_one_sentence_with_close_matches():
    cfg = compose_train(["model.name=resnet181"])
    with pytest.raises(UserError, match="not a timm model .close matches: .*resnet18"):
        recipe.build_model(cfg, 10)


@pytest.mark.parametrize("overrides", [[], MIXED, ["aug=none"]])
def test_the_transforms_are_the_explicit_torchvision_pipelines(overrides):
    cfg = compose_train(overrides)
    image = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    for built, train_ in ((recipe.train_transform(cfg), True), (recipe.val_transform(cfg), False)):
        expected = explicit_transform(cfg, train_)
        assert repr(built) == repr(expected)
        torch.manual_seed(5)
        out = built(image)
        torch.manual_seed(5)
        assert torch.equal(out, expected(image))


def test_the_batch_mix_and_the_loss_are_the_explicit_ones():
    cfg = compose_train([*MIXED, "loss.label_smoothing=0.1", "loss.class_weights=balanced"])
    images, labels = torch.rand(8, 3, 16, 16), torch.arange(8) % 4
    torch.manual_seed(9)
    mixed = recipe.batch_mix(cfg, 4)(images, labels)
    torch.manual_seed(9)
    expected = explicit_mix(cfg, 4)(images, labels)
    assert all(torch.equal(a, b) for a, b in zip(mixed, expected, strict=True))
    assert recipe.batch_mix(compose_train([]), 4) is None
    weights, logits = torch.tensor([1.0, 2.0, 0.5, 1.5]), torch.randn(8, 4)
    built, explicit = recipe.build_loss(cfg, weights), explicit_loss(cfg, weights)
    assert torch.equal(built(logits, labels), explicit(logits, labels))
    plain = compose_train([])
    assert torch.equal(
        recipe.build_loss(plain, weights)(logits, labels), explicit_loss(plain, weights)(logits, labels)
    )


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["optim=sgd", "optim.schedule=onecycle"],
        ["optim.warmup_epochs=2", "trainer.epochs=5"],
        ["optim.schedule=constant", "optim.warmup_epochs=1"],
    ],
)
def test_the_optimizer_and_schedule_step_as_the_explicit_ones(overrides):
    cfg, total = compose_train(overrides), 20
    torch.manual_seed(0)
    nets = [torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)]
    nets[1].load_state_dict(nets[0].state_dict())
    pairs = [
        recipe.build_optimizer(cfg, nets[0].parameters(), total),
        explicit_optimizer(cfg, nets[1].parameters(), total),
    ]
    x = torch.randn(6, 4)
    lrs: list[list[float]] = [[], []]
    for _ in range(total):
        for net, (opt, sched), seen in zip(nets, pairs, lrs, strict=True):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
            sched.step()
            seen.append(opt.param_groups[0]["lr"])
    assert lrs[0] == lrs[1] and type(pairs[0][0]) is type(pairs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True))
    assert repr(pairs[0][0].state_dict()) == repr(pairs[1][0].state_dict())


def test_a_training_with_the_recipe_is_a_training_with_the_explicit_calls(tmp_path, monkeypatch, store):
    """Same seed, same metric and losses: the harness behaves today as before the recipe split."""
    overrides = [*TINY, "trainer.epochs=1", "trainer.limit_train_batches=3", "aug.mixup_alpha=0.2"]

    def metrics(name):
        summary = train(compose_train(overrides), tmp_path / name, overrides)
        return MlflowClient(store.uri).get_run(summary["run_id"]).data.metrics

    with_recipe = metrics("recipe")
    for name, explicit in [
        ("build_model", explicit_model),
        ("train_transform", lambda cfg: explicit_transform(cfg, True)),
        ("val_transform", lambda cfg: explicit_transform(cfg, False)),
        ("batch_mix", explicit_mix),
        ("build_loss", explicit_loss),
        ("build_optimizer", explicit_optimizer),
    ]:
        monkeypatch.setattr(recipe, name, explicit)
    without = metrics("explicit")
    keys = ("best_val_acc", "train_loss", "val_loss", "val_acc")
    assert {k: with_recipe[k] for k in keys} == {k: without[k] for k in keys}
