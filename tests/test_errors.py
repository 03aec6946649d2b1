"""Issue 15: every failure is one clear line (exit 1, no traceback) and leaves nothing
behind: settings and options, backbone sizes, unwritable and full disks, Ctrl-C, stale
temporaries, plugin problems, threshold sanity."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from hpatk.cli.main import cli

TINY = "timm:test_resnet"


def invoke(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(r, *fragments: str) -> str:
    """Exit 1, exactly one ``Error:`` line containing every fragment, no traceback."""
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, r.output
    for fragment in fragments:
        assert fragment in errors[0], r.output
    return errors[0]


# -- 1. bad values in --config ----------------------------------------------------------
@pytest.mark.parametrize("line, fragments", [
    ("epochs: abc", ["epochs must be an integer", "'abc'"]),
    ("epochs: [1]", ["epochs must be an integer", "[1]"]),
    ("lr: abc", ["lr must be a number"]),
    ("seed: abc", ["seed must be an integer"]),
    ("aug_params: 3", ["aug_params must be a mapping"]),
    ("loss_params: {gamma: abc}", ["loss_params gamma=abc", "focal"]),
    ("in_stains: purple", ["in_stains", "no stain 'purple'"]),
    ("amp: maybe", ["amp must be true or false"]),
    ("seed: -1", ["seed must be >= 0"]),
    ("fold: 9", ["fold must be in 0..4"]),
])
def test_bad_config_values_are_one_line_naming_key_and_file(synth_cache, tmp_path, line,
                                                            fragments):
    out = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {synth_cache}\nout: {out}\nbackbone: {TINY}\nepochs: 1\n"
                      f"{line}\n")
    # a repeated key: the last one wins in YAML, so the bad value is the one read
    r = invoke("train", "--config", config)
    assert_one_line_error(r, f"config '{config}'", *fragments)
    assert not out.exists()


def test_a_good_yaml_float_written_as_5e_4_is_read_as_a_number(tmp_path):
    from hpatk.core.train_config import read_config

    config = tmp_path / "c.yaml"
    config.write_text("lr: 5e-4\nin_stains: green,red\n")  # YAML 1.1 reads 5e-4 as text
    cfg = read_config(config)
    assert cfg.lr == 5e-4 and cfg.in_stains == ["green", "red"]


# -- 2. bad option values ---------------------------------------------------------------
@pytest.mark.parametrize("args, fragments", [
    (["--loss-param", "gamma=abc"], ["--loss-param gamma=abc", "focal"]),
    (["--loss-param", "bogus=1"], ["--loss-param bogus=1", "bogus"]),
    (["--aug-param", "hflip=abc"], ["--aug-param hflip=abc", "classic"]),
    (["--backbone-param", "drop_rate=abc"], ["--backbone-param drop_rate=abc"]),
    (["--backbone-param", "bogus=1"], ["--backbone-param bogus=1"]),
    (["--seed", "-1"], ["--seed must be >= 0, not -1"]),
    (["--lr", "-1"], ["--lr must be a positive number"]),
])
def test_bad_option_values_fail_before_anything_is_written(synth_cache, tmp_path, args,
                                                           fragments):
    out = tmp_path / "run"
    r = invoke("train", "--data", synth_cache, "--backbone", TINY, "--epochs", 1,
               "--out", out, *args)
    assert_one_line_error(r, *fragments)
    assert not out.exists()  # no config.yaml, no folds.csv


def test_settings_are_validated_once_in_train_config():
    """engine.train does not validate again: TrainConfig refuses bad values when built."""
    import inspect

    from hpatk.core import engine
    from hpatk.core.errors import HpatkError
    from hpatk.core.train_config import TrainConfig

    assert ".validate(" not in inspect.getsource(engine)
    with pytest.raises(HpatkError, match="--epochs must be an integer"):
        TrainConfig(epochs="3")
    with pytest.raises(HpatkError, match="--batch-size must be positive"):
        TrainConfig().replace(batch_size=0)


# -- 3. a backbone's minimum input size -------------------------------------------------
def test_min_input_size_is_the_smallest_size_that_runs():
    import torch
    from hpatk.core.engine import min_input_size
    from hpatk.core.registry import get_registry

    model = get_registry().backbones.create("inceptionv4", num_classes=2, in_chans=4).eval()
    smallest = min_input_size(model, 4)
    assert smallest is not None and smallest > 64
    with torch.no_grad():
        assert model(torch.rand(1, 4, smallest, smallest)).shape == (1, 2)
        with pytest.raises(RuntimeError):
            model(torch.rand(1, 4, smallest - 1, smallest - 1))


def test_train_refuses_a_size_below_the_backbones_minimum_up_front(synth_cache, tmp_path):
    out = tmp_path / "run"
    r = invoke("train", "--data", synth_cache, "--backbone", "inceptionv4", "--epochs", 1,
               "--out", out)
    line = assert_one_line_error(r, "--backbone inceptionv4", "at least 75 px", "64 px")
    assert "Calculated padded" not in line
    assert not out.exists()


def test_demo_picks_a_valid_size_for_its_backbone(tmp_path):
    from hpatk.cli.demo import demo_size

    assert demo_size("resnet18", None) == 64
    assert demo_size("inceptionv4", None) == 80  # 75 px minimum, rounded up to 16
    assert demo_size("inceptionv4", 96) == 96
    r = invoke("demo", "--backbone", "inceptionv4", "--size", 64, "--out", tmp_path / "d")
    assert_one_line_error(r, "at least 75 px", "--size gives 64 px")
    assert not (tmp_path / "d").exists()
