"""The plugin core: hooks, registry, entry points, broken and duplicate plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from hpatk.cli.main import cli
from hpatk.core import Enhancer, RegistryError, get_registry, hookimpl

HPATK = [sys.executable, "-m", "hpatk.cli.main"]


def run_hpatk(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*HPATK, *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=300)


class Doubler(Enhancer):
    name = "doubler"

    def forward(self, x):
        return (x * 2).clamp(0, 1)


class ThrowAway:
    @hookimpl
    def hpatk_register_enhancers(self, register):
        register("doubler", Doubler, aliases=("x2",), description="test enhancer")

    @hookimpl
    def hpatk_register_augmentations(self, register):
        register("noop_aug", lambda **kw: (lambda x: x), description="identity augmentation")

    @hookimpl
    def hpatk_register_backbones(self, register):
        def tiny(num_classes, in_chans=4, pretrained=None, **kw):
            import torch.nn as nn

            return nn.Sequential(nn.Conv2d(in_chans, 4, 3), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(4, num_classes))

        register("tiny_cnn", tiny)

    @hookimpl
    def hpatk_register_losses(self, register):
        import torch.nn as nn

        register("l1_test", lambda **kw: nn.L1Loss(**kw))


def test_hook_hpatk_register_enhancers(throwaway_plugin):
    import torch

    reg = throwaway_plugin(ThrowAway(), "throwaway")
    assert "doubler" in reg.enhancers.names()
    enh = reg.enhancers.create("x2")  # by alias
    x = torch.full((1, 4, 8, 8), 0.25)
    assert torch.allclose(enh(x), torch.full_like(x, 0.5))
    assert reg.enhancers.get("doubler").plugin == "throwaway"


def test_throwaway_plugin_is_gone_after_unregister():
    reg = get_registry()
    plugin = ThrowAway()
    reg.pm.register(plugin, name="gone")
    try:
        assert "doubler" in reg.enhancers
    finally:
        reg.pm.unregister(name="gone")
    assert "doubler" not in reg.enhancers
    assert "gone" not in [p.name for p in reg.plugins()]


def test_hook_hpatk_register_augmentations(throwaway_plugin):
    reg = throwaway_plugin(ThrowAway(), "throwaway")
    aug = reg.augmentations.create("noop_aug")
    assert aug(41) == 41
    assert {"classic", "noop_aug"} <= set(reg.augmentations.names())
    assert "dcgan" not in reg.augmentations and "dcgan" in reg.synthesizers


def test_hook_hpatk_register_backbones(throwaway_plugin):
    import torch

    reg = throwaway_plugin(ThrowAway(), "throwaway")
    net = reg.backbones.create("tiny_cnn", num_classes=5, in_chans=3)
    assert net(torch.zeros(2, 3, 16, 16)).shape == (2, 5)


def test_hook_hpatk_register_losses(throwaway_plugin):
    import torch

    reg = throwaway_plugin(ThrowAway(), "throwaway")
    loss = reg.losses.create("l1_test")
    assert loss(torch.ones(2, 3), torch.zeros(2, 3)).item() == pytest.approx(1.0)


def test_hook_hpatk_register_synthesizers(throwaway_plugin):
    import numpy as np
    from hpatk.core import Synthesizer

    class Constant(Synthesizer):
        name = "constant_test"

        def fit(self, images, labels, *, classes, out_dir=None, seed=0, progress=True,
                resume=False, stains=()):
            self.params["image_size"] = int(images.shape[-1])
            self.value = int(np.asarray(images).mean())
            return {}

        def sample(self, n, labels=None, *, seed=0):
            s = self.image_size
            return np.full((n, 4, s, s), self.value, np.uint8)

    class WithSynth:
        @hookimpl
        def hpatk_register_synthesizers(self, register):
            register("constant_test", Constant, aliases=("const_test",))

    reg = throwaway_plugin(WithSynth(), "with-synth")
    synth = reg.synthesizers.create("const_test", level=1)
    assert isinstance(synth, Synthesizer) and synth.config() == {"name": "constant_test",
                                                                 "level": 1}
    synth.fit(np.full((3, 4, 8, 8), 7, np.uint8), np.ones((3, 1), np.uint8), classes=[0])
    assert synth.sample(2).shape == (2, 4, 8, 8) and synth.sample(1).max() == 7


def test_a_name_cannot_be_both_augmentation_and_synthesizer(throwaway_plugin):
    from hpatk.core.errors import RegistryError

    class Clash:
        @hookimpl
        def hpatk_register_augmentations(self, register):
            register("twice_test", lambda: None)

        @hookimpl
        def hpatk_register_synthesizers(self, register):
            register("twice_test", lambda: None)

    reg = throwaway_plugin(Clash(), "clash")
    with pytest.raises(RegistryError, match="'twice_test' is registered as an augmentation"):
        reg.synthesizers.names()


def test_hook_hpatk_register_commands(throwaway_plugin):
    import click

    class WithCommand:
        @hookimpl
        def hpatk_register_commands(self, cli):
            @cli.command(name="hello-test")
            @click.argument("who")
            def hello(who):
                """Say hello."""
                click.echo(f"hello {who}")

    reg = throwaway_plugin(WithCommand(), "with-command")
    group = type(cli)(name="hpatk-test")
    reg.add_commands(group)
    result = CliRunner().invoke(group, ["hello-test", "plugin"])
    assert result.exit_code == 0, result.output
    assert result.output == "hello plugin\n"


def test_third_party_package_via_entry_points():
    """tests/plugin_pkg is pip-installed (make test / CI): the path a real user takes."""
    reg = get_registry()
    infos = {p.name: p for p in reg.plugins()}
    assert infos["hpatk-gamma.gamma"].dist == "hpatk-gamma"
    assert infos["hpatk-gamma.gamma"].status == "ok"
    assert set(infos["hpatk-gamma.gamma"].hooks) == {"hpatk_register_enhancers",
                                                     "hpatk_register_commands"}
    assert reg.synthesizers.get("meannoise").plugin == "hpatk-gamma.meannoise"
    assert reg.enhancers.get("pow").name == "gamma"
    out = run_hpatk("gamma-table", "0.5")
    assert out.returncode == 0, out.stderr
    assert "0.5 -> 0.707" in out.stdout
    assert "gamma-table" in run_hpatk("--help").stdout


def test_builtins_load_through_entry_points():
    infos = {p.name: p for p in get_registry().plugins()}
    for name in ("enhance", "augment_classic", "augment_gan", "backbones", "losses"):
        assert infos[name].dist == "hpatk"
        assert infos[name].source == "entry-point"
        assert infos[name].status == "ok"


def test_disable_autoload_keeps_builtins_only():
    out = run_hpatk("plugins", "--format", "json", env={"HPATK_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert out.returncode == 0, out.stderr
    names = {p["name"] for p in json.loads(out.stdout)}
    assert "hpatk-gamma.gamma" not in names
    assert {"enhance", "backbones", "losses"} <= names


def test_unknown_name_lists_close_matches():
    match = r"unknown backbone 'resnet5'; did you mean .*'resnet50'"
    with pytest.raises(RegistryError, match=match):
        get_registry().backbones.create("resnet5", num_classes=2)


def test_registry_unknown_kind():
    with pytest.raises(RegistryError, match="unknown kind 'widgets'"):
        get_registry().catalog("widgets")


def test_duplicate_name_names_both_plugins(throwaway_plugin):
    class Clash:
        @hookimpl
        def hpatk_register_enhancers(self, register):
            register("clahe", Doubler)

    reg = throwaway_plugin(Clash(), "clash-plugin")
    with pytest.raises(RegistryError) as err:
        reg.enhancers.names()
    assert "'clahe'" in str(err.value)
    assert "'enhance'" in str(err.value) and "'clash-plugin'" in str(err.value)


def test_duplicate_alias_is_an_error(throwaway_plugin):
    class AliasClash:
        @hookimpl
        def hpatk_register_losses(self, register):
            register("my_focal", lambda **kw: None, aliases=("focal",))

    reg = throwaway_plugin(AliasClash(), "alias-clash")
    with pytest.raises(RegistryError, match="'focal' is registered twice"):
        reg.losses.names()


def _plugins_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "plugs"
    folder.mkdir()
    for name, body in files.items():
        (folder / name).write_text(textwrap.dedent(body))
    return folder


GOOD = """
    from hpatk.core import Enhancer, hookimpl

    class Half(Enhancer):
        name = "half"
        def forward(self, x):
            return x * 0.5

    @hookimpl
    def hpatk_register_enhancers(register):
        register("half", Half, description="halves intensities")
"""


def test_plugins_dir_and_broken_plugin_reported(tmp_path):
    folder = _plugins_dir(tmp_path, {
        "good.py": GOOD,
        "broken.py": "import this_module_does_not_exist_hpatk\n",
    })
    out = run_hpatk("--plugins-dir", str(folder), "plugins", "--format", "json")
    assert out.returncode == 0, out.stderr
    infos = {p["name"]: p for p in json.loads(out.stdout)}
    assert infos["plugins-dir:broken"]["status"] == "broken"
    assert "this_module_does_not_exist_hpatk" in infos["plugins-dir:broken"]["error"]
    assert infos["plugins-dir:good"]["status"] == "ok"
    assert infos["enhance"]["status"] == "ok"  # the rest still load
    table = run_hpatk("--plugins-dir", str(folder), "plugins")
    assert "broken plugin 'plugins-dir:broken'" in table.stderr
    listing = run_hpatk("registry", "enhancers", env={"HPATK_PLUGINS_DIR": str(folder)})
    assert "half" in listing.stdout and "clahe" in listing.stdout


def test_broken_entry_point_plugin_reported(tmp_path):
    """A distribution whose plugin module fails to import, found through entry points."""
    site = tmp_path / "site"
    dist = site / "hpatk_broken-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hpatk-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[hpatk]\nbroken = hpatk_broken_mod\n")
    (site / "hpatk_broken_mod.py").write_text("raise RuntimeError('boom at import')\n")
    env = {"PYTHONPATH": str(site)}
    out = run_hpatk("plugins", "--format", "json", env=env)
    assert out.returncode == 0, out.stderr
    infos = {p["name"]: p for p in json.loads(out.stdout)}
    assert infos["hpatk-broken.broken"]["status"] == "broken"
    assert "boom at import" in infos["hpatk-broken.broken"]["error"]
    assert infos["hpatk-broken.broken"]["version"] == "1.0"
    assert "clahe" in run_hpatk("registry", "enhancers", env=env).stdout


def test_hook_raising_marks_plugin_broken(throwaway_plugin):
    class Raises:
        @hookimpl
        def hpatk_register_losses(self, register):
            raise ValueError("bad registration")

    reg = throwaway_plugin(Raises(), "raises")
    assert "focal" in reg.losses.names()
    info = {p.name: p for p in reg.plugins()}["raises"]
    assert info.status == "broken" and "bad registration" in info.error


def test_misspelled_hook_is_an_error(tmp_path):
    folder = _plugins_dir(tmp_path, {"typo.py": """
        from hpatk.core import hookimpl

        @hookimpl
        def hpatk_register_enhancer(register):
            pass
    """})
    out = run_hpatk("--plugins-dir", str(folder), "registry", "enhancers")
    assert out.returncode == 1
    assert "hpatk_register_enhancer" in out.stderr
    assert "Traceback" not in out.stderr


def test_pattern_entry_passes_variant():
    import torch

    net = get_registry().backbones.create("timm:resnet18", num_classes=3, in_chans=4).eval()
    assert net(torch.zeros(1, 4, 64, 64)).shape == (1, 3)
    with pytest.raises(RegistryError, match="timm has no model 'no_such_net'"):
        get_registry().backbones.create("timm:no_such_net", num_classes=3)


def test_trace_plugins_env(tmp_path):
    out = run_hpatk("registry", "losses", env={"HPATK_TRACE_PLUGINS": "1"})
    assert out.returncode == 0
    assert "hpatk_register_losses" in out.stderr


def _command_plugin(name: str, text: str):
    import click

    class AddsCommand:
        @hookimpl
        def hpatk_register_commands(self, cli):
            @cli.command(name=name)
            def cmd():
                """A plugin command."""
                click.echo(text)

    return AddsCommand()


def test_plugin_commands_are_never_shadowed(throwaway_plugin):
    """A command name a built-in or an earlier plugin has is refused, and the refusal
    names both plugins; the first command stays reachable."""
    throwaway_plugin(_command_plugin("hello-test", "first"), "first-plugin")
    throwaway_plugin(_command_plugin("hello-test", "second"), "second-plugin")
    reg = throwaway_plugin(_command_plugin("train", "not the engine"), "train-plugin")
    import click

    group = click.Group(name="hpatk-test")
    reg.add_commands(group, builtin=["train"])
    assert "train" not in group.commands
    result = CliRunner().invoke(group, ["hello-test"])
    assert result.exit_code == 0 and result.output == "first\n"
    infos = {p.name: p for p in reg.plugins()}
    assert infos["first-plugin"].refused == []
    assert infos["second-plugin"].refused == [
        "command 'hello-test' of plugin 'second-plugin' refused: 'hello-test' is already the "
        "command of plugin 'first-plugin'"]
    assert infos["train-plugin"].refused == [
        "command 'train' of plugin 'train-plugin' refused: 'train' is already hpatk's "
        "built-in command"]
    assert infos["train-plugin"].as_dict()["refused"] == infos["train-plugin"].refused


def test_plugins_lists_a_refused_command(tmp_path):
    folder = _plugins_dir(tmp_path, {"trainer.py": """
        import click
        from hpatk.core import hookimpl

        @hookimpl
        def hpatk_register_commands(cli):
            @cli.command(name="train")
            def train():
                "Not hpatk's."
    """})
    out = run_hpatk("--plugins-dir", str(folder), "plugins", "--format", "json")
    assert out.returncode == 0, out.stderr
    info = {p["name"]: p for p in json.loads(out.stdout)}["plugins-dir:trainer"]
    assert info["refused"] == ["command 'train' of plugin 'plugins-dir:trainer' refused: "
                               "'train' is already hpatk's built-in command"]
    table = run_hpatk("--plugins-dir", str(folder), "plugins")
    assert "command 'train' of plugin 'plugins-dir:trainer' refused" in table.stderr


def test_plugins_dir_option_leaves_the_environment_alone(tmp_path, monkeypatch):
    """--plugins-dir hands the folders to the registry; HPATK_PLUGINS_DIR is untouched."""
    from hpatk.core.registry import plugin_dirs, set_plugin_dirs

    monkeypatch.delenv("HPATK_PLUGINS_DIR", raising=False)
    folder = _plugins_dir(tmp_path, {"good.py": GOOD})
    try:
        result = CliRunner().invoke(cli, ["--plugins-dir", str(folder), "registry",
                                          "enhancers"])
        assert result.exit_code == 0, result.output
        assert "[plugins-dir:good]" in result.output
        assert "HPATK_PLUGINS_DIR" not in os.environ
        assert plugin_dirs() == [folder]
    finally:
        set_plugin_dirs(None)
    assert plugin_dirs() == [] and "half" not in get_registry().enhancers


@pytest.mark.slow
def test_plugins_dir_enhancer_reaches_cache_workers(tmp_path, synth_data):
    """The folders travel to the spawned cache workers as an argument (not through the
    environment), so a --plugins-dir enhancer preprocesses there too."""
    import h5py
    import numpy as np

    folder = _plugins_dir(tmp_path, {"good.py": GOOD})
    out = tmp_path / "half.h5"
    env = {k: v for k, v in os.environ.items() if k != "HPATK_PLUGINS_DIR"}
    r = subprocess.run([*HPATK, "--plugins-dir", str(folder), "cache", "build", str(synth_data),
                        "--out", str(out), "--enhance", "half", "--size", "32",
                        "--workers", "2"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    ref = tmp_path / "none.h5"
    r = run_hpatk("cache", "build", str(synth_data), "--out", str(ref), "--enhance", "none",
                  "--size", "32", "--workers", "1")
    assert r.returncode == 0, r.stderr
    with h5py.File(out, "r", locking=False) as a, h5py.File(ref, "r", locking=False) as b:
        half, plain = a["images"][()].astype(int), b["images"][()].astype(int)
    assert np.abs(half - plain // 2).max() <= 1 and plain.max() > 100
