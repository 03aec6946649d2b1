"""--recipe paper-top5 / paper-28: the preset is applied, explicit options win, an unknown
recipe is one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from helpers import invoke
from hpatk.cli.train import train_config
from hpatk.core.errors import HpatkError
from hpatk.core.recipes import RECIPES, recipe_settings, recipe_table
from hpatk.core.train_config import TrainConfig, read_config


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_setting_is_a_config_field_with_a_source(name):
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, _value, source in recipe_table(name):
        assert key in fields, key
        assert source.startswith(("Sec.", "Table")), (key, source)
    TrainConfig().override(**recipe_settings(name)).validate()


def test_paper_top5_is_applied():
    cfg = train_config(None, False, "paper-top5", {"data": "c.h5", "out": "r"})
    assert (cfg.backbone, cfg.head, cfg.classes, cfg.lr, cfg.epochs) == (
        "vgg16", "paper", "top5", 1e-4, 50)
    assert [cfg.batch_size_at(e) for e in (0, 15, 30, 49)] == [32, 64, 128, 128]
    assert cfg.loss == "focal" and cfg.loss_params == {"gamma": 2.0}
    assert cfg.in_stains == ["green", "red", "blue"] and cfg.folds == 5
    assert TrainConfig().lr == 5e-4  # the recipe did not leak into the defaults
    cfg28 = train_config(None, False, "paper-28", {"data": "c.h5", "out": "r"})
    assert (cfg28.backbone, cfg28.classes, cfg28.lr, cfg28.epochs) == (
        "inceptionv4", "all", 5e-4, 35)


def test_explicit_options_override_the_recipe():
    cfg = train_config(None, False, "paper-top5",
                       {"data": "c.h5", "out": "r", "lr": 3e-4, "backbone": "resnet50",
                        "epochs": 2, "loss_params": {"gamma": 1.0}})
    assert (cfg.lr, cfg.backbone, cfg.epochs, cfg.loss_params) == (3e-4, "resnet50", 2,
                                                                   {"gamma": 1.0})
    assert cfg.head == "paper" and cfg.classes == "top5"  # the rest of the recipe stays
    bce = train_config(None, False, "paper-top5", {"data": "c.h5", "out": "r", "loss": "bce"})
    assert bce.loss == "bce" and bce.loss_params == {}  # focal's gamma means nothing to bce


def test_unknown_recipe_is_one_line(tmp_path):
    with pytest.raises(HpatkError, match="paper-top5"):
        recipe_settings("paper-5")
    r = invoke("train", "--recipe", "paper-5", "--data", tmp_path, "--out", tmp_path / "r",
               ok=False)
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "--recipe 'paper-5'" in lines[0] and "paper-28" in lines[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_train_records_the_recipe_settings(top5_dataset, tmp_path):
    """End to end: one epoch of a tiny backbone, the recipe's other settings in config.yaml."""
    cache = top5_dataset(n=24, size=32, seed=2)[1]
    invoke("train", "--recipe", "paper-top5", "--data", cache, "--backbone", "timm:test_resnet",
           "--epochs", 1, "--folds", 3, "--device", "cpu", "--out", tmp_path / "run")
    cfg = read_config(Path(tmp_path / "run" / "config.yaml"))
    assert (cfg.backbone, cfg.epochs, cfg.folds) == ("timm:test_resnet", 1, 3)
    assert (cfg.lr, cfg.head, cfg.classes, cfg.in_stains) == (
        1e-4, "paper", "top5", ["green", "red", "blue"])


def test_experiment_backbones_unknown_recipe_is_one_line(tmp_path):
    r = invoke("experiment", "backbones", "--data", tmp_path, "--recipe", "nope",
               "--out", tmp_path / "t", ok=False)
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1
    assert "--recipe 'nope'" in r.output and not (tmp_path / "t").exists()
