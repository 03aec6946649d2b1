"""The demo's GAN settings (cli/demo.py): a valid synthesizer with the measured recipe, and
the step that measures its samples."""

from __future__ import annotations

import pytest
import yaml
from hpatk.cli.demo import GAN_AUG, GAN_EVALUATE, GAN_STEPS
from hpatk.core import get_registry


def _aug_params(args: list[str]) -> tuple[str, dict]:
    name = args[args.index("--aug") + 1]
    params = {}
    for i, a in enumerate(args):
        if a == "--aug-param":
            key, _, value = args[i + 1].partition("=")
            params[key] = yaml.safe_load(value)
    return name, params


def test_the_demo_gan_is_one_conditional_dcgan_with_an_adam_discriminator():
    name, params = _aug_params(GAN_AUG)
    synth = get_registry().synthesizers.create(name, steps=GAN_STEPS, **params)
    assert not synth.per_class  # one model for the 5 classes: 5x the steps per model
    assert synth.params["d_optimizer"] == "adam" and synth.params["d_lr"] is None
    assert (synth.params["image_size"], synth.params["width"]) == (32, 8)
    assert GAN_STEPS >= 2000  # fewer steps gave coloured noise (docs/pages/synthetic.md)


class _Stop(Exception):
    pass


def test_the_demo_measures_its_gan_with_gan_evaluate(tmp_path, monkeypatch):
    """The demo's step list holds `hpatk gan evaluate` on its run, with --gan; not without."""
    import hpatk.cli.demo as demo

    ran: list[list[str]] = []
    monkeypatch.setattr(demo, "_run", lambda i, n, record: ran.append(record.args))

    def stop(*args, **kwargs):
        raise _Stop  # every step was listed (and "run") by now

    monkeypatch.setattr(demo, "score_submission", stop)
    for flag, expected in (("--gan", True), ("--no-gan", False)):
        ran.clear()
        with pytest.raises(_Stop):
            demo.demo.main(["--out", str(tmp_path / flag), flag], standalone_mode=False)
        evaluate = [a for a in ran if a[:2] == ["gan", "evaluate"]]
        assert bool(evaluate) is expected
        train = next(a for a in ran if a[0] == "train")
        if expected:
            assert evaluate[0][2] == train[train.index("--out") + 1]  # the run it trained
            assert evaluate[0][-len(GAN_EVALUATE):] == GAN_EVALUATE
            assert f"steps={GAN_STEPS}" in train and "cdcgan" in train
        else:
            assert train[train.index("--aug") + 1] == "classic"
