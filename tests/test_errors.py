"""Issue 15: every failure is one clear line (exit 1, no traceback) and leaves nothing
behind: settings and options, backbone sizes, unwritable and full disks, Ctrl-C, stale
temporaries, plugin problems, threshold sanity."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import invoke, one_line_error

TINY = "timm:test_resnet"


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
    r = invoke("train", "--config", config, ok=False)
    one_line_error(r, f"config '{config}'", *fragments)
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
               "--out", out, *args, ok=False)
    one_line_error(r, *fragments)
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
    from hpatk.core.registry import get_registry
    from hpatk.core.train_objects import min_input_size

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
               "--out", out, ok=False)
    line = one_line_error(r, "--backbone inceptionv4", "at least 75 px", "64 px")
    assert "Calculated padded" not in line
    assert not out.exists()


def test_demo_picks_a_valid_size_for_its_backbone(tmp_path):
    from hpatk.cli.demo import demo_size

    assert demo_size("resnet18", None) == 64
    assert demo_size("inceptionv4", None) == 80  # 75 px minimum, rounded up to 16
    assert demo_size("inceptionv4", 96) == 96
    r = invoke("demo", "--backbone", "inceptionv4", "--size", 64, "--out", tmp_path / "d", ok=False)
    one_line_error(r, "at least 75 px", "--size gives 64 px")
    assert not (tmp_path / "d").exists()


# -- shared fixtures for the output-side items --------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(synth_cache, tmp_path_factory):
    """One epoch of timm's test network on the session cache (64 px): a complete run."""
    out = tmp_path_factory.mktemp("errruns") / "run"
    r = invoke("train", "--data", synth_cache, "--backbone", TINY, "--aug", "none",
               "--epochs", 1, "--batch-size", 16, "--out", out, ok=False)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def exported_model():
    from test_onnx_export import shared_export

    _, res, d = shared_export()
    return d / "ck.pt", res.path


def _under_a_file(tmp_path: Path) -> tuple[Path, str]:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker / "out", f"'{blocker}' is a file, not a folder"


# -- 4. unwritable output ---------------------------------------------------------------
COMMANDS = {
    "data synth": lambda f, out: ["data", "synth", out, "--n", 20, "--size", 32,
                                  "--workers", 1],
    "data folds": lambda f, out: ["data", "folds", f["data"], "--out", out / "folds.csv"],
    "train": lambda f, out: ["train", "--data", f["cache"], "--backbone", TINY, "--epochs", 1,
                             "--out", out],
    "evaluate": lambda f, out: ["evaluate", f["run"], "--out", out / "preds.csv"],
    "export": lambda f, out: ["export", f["ckpt"], "--out", out / "m.onnx", "--no-verify"],
    "predict": lambda f, out: ["predict", f["onnx"], f["pred_data"], "--out", out / "s.csv"],
    "gan train": lambda f, out: ["gan", "train", "--data", f["cache"], "--class", 0,
                                 "--size", 16, "--param", "width=1", "--steps", 1,
                                 "--out", out],
    "cache build": lambda f, out: ["cache", "build", f["data"], "--out", out / "c.h5",
                                   "--size", 32, "--workers", 1],
}


@pytest.fixture(scope="module")
def inputs(synth_data, synth_cache, tiny_run, exported_model):
    ckpt, onnx_path = exported_model
    return {"data": synth_data, "cache": synth_cache, "run": tiny_run, "ckpt": ckpt,
            "onnx": onnx_path, "pred_data": synth_data}


@pytest.mark.parametrize("place", ["under a file", "under /proc"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_unwritable_output_is_one_line(inputs, tmp_path, command, place):
    if place == "under a file":
        out, fragment = _under_a_file(tmp_path)
    else:
        out, fragment = Path("/proc") / f"hpatk-{tmp_path.name}", "cannot write"
    r = invoke(*COMMANDS[command](inputs, out), ok=False)
    line = one_line_error(r)
    assert fragment in line or (place == "under /proc" and "/proc" in line), line
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["a-file"] if place ==
                                                         "under a file" else [])


# -- 5. a full disk ---------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only; skipped where mounting is not allowed)."""
    import subprocess

    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?); ENOSPC is injected elsewhere")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


def test_full_disk_keeps_the_previous_checkpoint_injected(tmp_path, monkeypatch):
    """ENOSPC injected into torch.save: one line, the old file intact, no temporary."""
    import errno

    import torch
    from hpatk.core.checkpoint import save_checkpoint
    from hpatk.core.errors import HpatkError

    path = tmp_path / "last.pt"
    save_checkpoint({"kind": "classifier", "epoch": 1}, path)
    before = path.read_bytes()

    def full(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(HpatkError, match=f"no space left on device writing {path}$"):
        save_checkpoint({"kind": "classifier", "epoch": 2}, path)
    assert path.read_bytes() == before and _temps(tmp_path) == []


@pytest.mark.parametrize("command", ["data synth", "cache build", "train", "export"])
def test_full_disk_is_one_line_and_leaves_no_temporary(inputs, small_disk, command):
    previous = small_disk / "c.h5"
    if command == "cache build":  # a good 16 px cache is there; a 64 px one does not fit
        from hpatk.core.cache import build_cache

        build_cache(inputs["data"], previous, enhance="none", size=16, workers=1, quiet=True)
    before = previous.read_bytes() if previous.exists() else None
    args = {
        "data synth": ["data", "synth", small_disk / "d", "--n", 100, "--size", 128,
                       "--workers", 1],
        "cache build": ["cache", "build", inputs["data"], "--out", previous, "--size", 64,
                        "--enhance", "none", "--workers", 1],
        "train": ["train", "--data", inputs["cache"], "--backbone", TINY, "--epochs", 1,
                  "--out", small_disk / "run"],
        "export": ["export", inputs["ckpt"], "--out", small_disk / "m.onnx"],
    }[command]
    r = invoke(*args, ok=False)
    one_line_error(r, "no space left on device writing")
    assert _temps(small_disk) == []
    if before is not None:
        assert previous.read_bytes() == before
    assert not (small_disk / "d").exists() and not (small_disk / "m.onnx").exists()


# -- 6. Ctrl-C ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_data(tmp_path_factory):
    """Enough images that a 2-worker cache build takes several seconds."""
    from hpatk.core.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("slow") / "data", n=240, size=128, seed=3,
                          workers=2)


def _interrupt(args: list[object], when: float | str, cwd: Path) -> tuple[int, str, float]:
    """Run ``hpatk ARGS`` in its own process group and SIGINT the whole group (as Ctrl-C
    in a terminal does) ``when`` seconds after the start, or once a line of its output
    contains ``when``; (exit code, output, seconds from the signal to the exit)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def ctrl_c_as_in_a_terminal() -> None:
        # a job started in the background by a non-interactive shell (how CI may run us)
        # inherits SIGINT *ignored*, and Python then installs no KeyboardInterrupt handler
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    p = subprocess.Popen([sys.executable, "-m", "hpatk.cli.main", *map(str, args)], cwd=cwd,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True, preexec_fn=ctrl_c_as_in_a_terminal)
    seen = []
    if isinstance(when, str):
        assert p.stdout is not None
        for line in p.stdout:  # progress lines: not a terminal, so one per step
            seen.append(line)
            if when in line:
                break
        else:
            pytest.fail(f"never printed {when!r} before ending:\n{''.join(seen)}")
    else:
        time.sleep(when)
    sent = time.monotonic()
    os.killpg(p.pid, signal.SIGINT)
    try:
        out, _ = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        pytest.fail(f"still running 30 s after Ctrl-C:\n{out}")
    return p.returncode, "".join(seen) + out, time.monotonic() - sent


@pytest.mark.slow
@pytest.mark.parametrize("command, when", [
    ("cache build", "building"), ("cache build", "10%"),
    ("data synth", "synth:"), ("train", "epoch 1/50"),
])
def test_ctrl_c_ends_within_seconds_without_traceback(slow_data, tmp_path, command, when):
    args = {"cache build": ["cache", "build", slow_data, "--out", tmp_path / "c.h5",
                            "--size", 384, "--workers", 2],  # upscaled: seconds of work
            "data synth": ["data", "synth", tmp_path / "d", "--n", 400, "--size", 128,
                           "--workers", 2],
            "train": ["train", "--data", slow_data, "--cache-dir", tmp_path, "--size", 32,
                      "--backbone", TINY, "--epochs", 50, "--out", tmp_path / "run"]}[command]
    code, out, took = _interrupt(args, when, tmp_path)
    assert code == 1 and "Aborted!" in out and "Traceback" not in out, out
    # measured 0.05-0.2 s from the signal to the exit (idle, beside 2-3 CPU hogs, under
    # xdist): 15 s leaves a 5x slower machine a wide margin; a hang fails at 30 s above
    assert took < 15, f"{took:.1f} s from Ctrl-C to exit:\n{out}"
    assert _temps(tmp_path) == [] and not (tmp_path / "c.h5").exists(), out
    assert not (tmp_path / "d").exists(), out


# -- 7. temporaries of killed runs --------------------------------------------------------
def test_resume_removes_checkpoint_temporaries_of_a_killed_run(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    stale = [run / ".last.pt.k1ll3d9x.tmp", run / ".best_loss.pt.abcdefgh.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    r = invoke("train", "--out", run, "--resume", "--epochs", 2, ok=False)
    assert r.exit_code == 0, r.output
    assert "removed a partial build left by a killed process" in r.output
    assert _temps(run) == [] and (run / "last.pt").is_file()


def test_data_synth_removes_the_folder_a_killed_run_left(tmp_path):
    left = tmp_path / ".d.zz9abc12.tmp"
    (left / "train").mkdir(parents=True)
    (left / "train" / "x_green.png").write_bytes(b"\x89PNG")
    other = tmp_path / ".d.csv.abcdefgh.tmp"  # another file's temporary: not ours
    other.write_text("x")
    r = invoke("data", "synth", tmp_path / "d", "--n", 20, "--size", 32, "--workers", 1, ok=False)
    assert r.exit_code == 0, r.output
    assert not left.exists() and other.exists() and (tmp_path / "d" / "train.csv").is_file()


@pytest.mark.slow
def test_a_synth_killed_with_sigkill_is_cleaned_by_the_next_run(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "hpatk.cli.main", "data", "synth", str(tmp_path / "d"),
            "--n", 400, "--size", 128, "--workers", 1]
    p = subprocess.Popen([str(a) for a in args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".d.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert list(tmp_path.glob(".d.*.tmp")), "the killed run left nothing to clean"
    r = invoke("data", "synth", tmp_path / "d", "--n", 20, "--size", 32, "--workers", 1, ok=False)
    assert r.exit_code == 0, r.output
    assert not list(tmp_path.glob(".d.*.tmp"))


# -- 8. half run folders, --resume without last.pt -------------------------------------
def test_resume_without_last_pt_is_refused(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "half"
    run.mkdir()
    for name in ("config.yaml", "folds.csv"):
        shutil.copy(tiny_run / name, run / name)
    r = invoke("train", "--out", run, "--resume", ok=False)
    one_line_error(r, "has no last.pt", "without --resume")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "folds.csv"]


def test_a_half_run_folder_is_started_over_and_said_so(tiny_run, synth_cache, tmp_path):
    import shutil

    run = tmp_path / "half"
    run.mkdir()
    for name in ("config.yaml", "folds.csv"):
        shutil.copy(tiny_run / name, run / name)
    r = invoke("train", "--data", synth_cache, "--backbone", TINY, "--aug", "none",
               "--epochs", 1, "--batch-size", 16, "--out", run, ok=False)
    assert r.exit_code == 0, r.output
    assert "stopped before its first checkpoint (no last.pt); starting it over" in r.output
    assert (run / "last.pt").is_file() and (run / "report.md").is_file()


# -- 9. synthetic images dropped by a cache rebuild -------------------------------------
def test_a_cache_rebuild_says_how_many_synthetic_images_it_drops(synth_data, tmp_path):
    import numpy as np
    from hpatk.core.cache import add_synthetic, build_cache, read_cache_meta

    cache = build_cache(synth_data, tmp_path / "c.h5", enhance="none", size=16, workers=1,
                        quiet=True)
    add_synthetic(cache, np.zeros((5, 4, 16, 16), np.uint8), 0, generator="g0.pt", fold=None,
                  seed=0)
    add_synthetic(cache, np.zeros((3, 4, 16, 16), np.uint8), 25, generator="g25.pt",
                  fold=None, seed=0)
    r = invoke("cache", "build", synth_data, "--out", cache, "--size", 16, "--enhance",
               "clahe", "--workers", 1, ok=False)
    assert r.exit_code == 0, r.output
    assert "drops its 8 synthetic images (2 batches" in r.output
    assert read_cache_meta(cache)["synthetic"] == []
    r = invoke("cache", "build", synth_data, "--out", cache, "--size", 16, "--enhance",
               "clahe", "--workers", 1, ok=False)
    assert "up to date" in r.output and "synthetic" not in r.output  # nothing dropped


# -- 10. plugin problems ------------------------------------------------------------------
BROKEN_HOOK = '''
from hpatk.core import hookimpl


@hookimpl
def hpatk_register_enhancers(register):
    raise RuntimeError("g3 needs libfoo")


@hookimpl
def hpatk_register_commands(cli):
    @cli.command("boom")
    def boom():
        """Fail like a buggy plugin command."""
        return {}["missing"]
'''


@pytest.fixture
def plugin_dir(tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "badimport.py").write_text("import this_module_does_not_exist_hpatk\n")
    (folder / "badhook.py").write_text(BROKEN_HOOK)
    return folder


def _hpatk(*args: object, env: dict[str, str] | None = None):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "hpatk.cli.main", *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=300)


def test_broken_plugins_warn_on_every_command_unless_silenced(plugin_dir, synth_data):
    r = _hpatk("--plugins-dir", plugin_dir, "data", "check", synth_data)
    warnings = [line for line in r.stderr.splitlines() if "warning: plugin" in line]
    assert len(warnings) == 2, r.stderr
    assert any("plugins-dir:badimport" in w and "this_module_does_not_exist_hpatk" in w
               for w in warnings)
    assert any("plugins-dir:badhook" in w and "g3 needs libfoo" in w for w in warnings)
    quiet = _hpatk("--plugins-dir", plugin_dir, "data", "check", synth_data,
                   env={"HPATK_NO_PLUGIN_WARNINGS": "1"})
    assert "warning: plugin" not in quiet.stderr and quiet.returncode == r.returncode


def test_an_unknown_name_names_the_broken_plugins_that_may_provide_it(plugin_dir, synth_data,
                                                                      tmp_path):
    r = _hpatk("--plugins-dir", plugin_dir, "cache", "build", synth_data, "--enhance", "g3",
               "--out", tmp_path / "c.h5", env={"HPATK_NO_PLUGIN_WARNINGS": "1"})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    line = [x for x in r.stderr.splitlines() if x.startswith("Error")]
    assert len(line) == 1 and "unknown enhancer 'g3'" in line[0]
    assert "plugin 'plugins-dir:badhook' is broken (RuntimeError: g3 needs libfoo)" in line[0]
    assert not (tmp_path / "c.h5").exists()


def test_a_plugin_command_that_raises_is_one_line_with_details_on_demand(plugin_dir):
    env = {"HPATK_NO_PLUGIN_WARNINGS": "1"}
    r = _hpatk("--plugins-dir", plugin_dir, "boom", env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "Error: KeyError in 'hpatk boom': 'missing' (rerun with --traceback or HPATK_DEBUG=1 "
        "for details)")
    for how in (["--traceback"], []):
        d = _hpatk("--plugins-dir", plugin_dir, *how, "boom",
                   env={**env, **({} if how else {"HPATK_DEBUG": "1"})})
        assert d.returncode == 1 and "Traceback" in d.stderr and "KeyError" in d.stderr


# -- 11. thresholds tuned on a failing model --------------------------------------------
def test_tuning_keeps_the_default_where_no_cut_beats_calling_everything_positive():
    import numpy as np
    from hpatk.core.metrics import tune_thresholds

    rng = np.random.default_rng(0)
    y = (rng.random((400, 3)) < [0.1, 0.3, 0.5]).astype(np.uint8)
    noise = rng.random((400, 3))
    signal = np.where(y == 1, 0.7 + 0.3 * noise, 0.6 * noise)  # separable: cut 0.6..0.7
    probs = np.concatenate([noise, signal], axis=1)
    yy = np.concatenate([y, y], axis=1)
    for grid in (None, np.linspace(0.05, 0.95, 19)):
        thr = tune_thresholds(yy, probs, grid=grid)
        for k in range(6):  # the reference: the tuned cut's F1 against "all positive"
            pred = probs[:, k] >= thr[k]
            tp = int((pred & (yy[:, k] == 1)).sum())
            f1 = 2 * tp / (pred.sum() + yy[:, k].sum())
            chance = 2 * yy[:, k].sum() / (len(yy) + yy[:, k].sum())
            assert thr[k] == 0.5 or f1 > chance
        assert np.all(thr[3:] > 0.55) and np.all(thr[3:] < 0.75)  # informative: tuned


def test_label_rate_warning():
    from hpatk.core.metrics import label_rate_warning

    assert label_rate_warning(6.0, 1.5, " on x") is not None
    assert "6.0 labels per image predicted on x" in label_rate_warning(6.0, 1.5, " on x")
    assert label_rate_warning(2.4, 1.5) is None and label_rate_warning(1.0, 0.0) is None


def test_train_records_label_rates_and_warns_when_far_above(tiny_run):
    import json

    from hpatk.core.metrics import label_rate_warning

    info = json.loads((tiny_run / "thresholds.json").read_text())["labels_per_image"]
    assert info["training"] > 0 and info["validation_predicted"] >= 1  # at least one label
    warned = label_rate_warning(info["validation_predicted"], info["training"]) is not None
    assert ("labels per image predicted" in (tiny_run / "report.md").read_text()) == warned


def test_predict_warns_when_a_model_labels_nearly_everything(exported_model, synth_data,
                                                             tmp_path):
    import torch
    from hpatk.core.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(exported_model[0])
    k = len(ckpt["classes"])
    ckpt["thresholds"] = [0.0] * k  # every class on every image
    ckpt["labels_per_image"] = 1.2
    save_checkpoint(ckpt, tmp_path / "bad.pt")
    r = invoke("export", tmp_path / "bad.pt", "--out", tmp_path / "bad.onnx", "--no-verify",
               ok=False)
    assert r.exit_code == 0, r.output
    r = invoke("predict", tmp_path / "bad.onnx", synth_data, "--out", tmp_path / "s.csv", ok=False)
    assert r.exit_code == 0, r.output
    assert f"warning: {k:.1f} labels per image predicted" in r.output
    assert "the training data has 1.2" in r.output
    del torch


# -- 12. small ones -----------------------------------------------------------------------
def test_a_negative_label_is_outside_the_range_not_a_non_integer():
    from hpatk.core.data import parse_target

    with pytest.raises(ValueError, match=r"label -1 is outside 0\.\.27"):
        parse_target("0 -1")
    with pytest.raises(ValueError, match="label 'x' is not an integer|label x is not"):
        parse_target("x")


def test_skipped_csv_names_the_csv_line_of_an_unreadable_image(synth_data, tmp_path):
    import csv
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    with open(data / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    victim = rows[4]["Id"]  # CSV line 6 (the header is line 1)
    (data / "train" / f"{victim}_green.png").write_bytes(b"not a png")
    r = invoke("data", "check", data, "--skip-bad", "--skipped-out", tmp_path / "s.csv", ok=False)
    with open(tmp_path / "s.csv", newline="") as f:
        skipped = list(csv.DictReader(f))
    assert [(s["Id"], s["line"]) for s in skipped] == [(victim, "6")], r.output


def test_an_unknown_enhancer_in_a_model_names_the_model_file(exported_model, tmp_path):
    import json

    import numpy as np
    import onnx
    from hpatk.core.errors import RegistryError
    from hpatk.export.runtime import OnnxClassifier

    model = onnx.load(str(exported_model[1]))
    for p in model.metadata_props:
        if p.key == "hpatk.enhance":
            p.value = json.dumps({"name": "g3"})
    path = tmp_path / "g3.onnx"
    onnx.save(model, str(path))
    clf = OnnxClassifier(path)
    with pytest.raises(RegistryError, match=f"model '{path}' .*unknown enhancer 'g3'"):
        clf.preprocess(np.zeros((len(clf.stains), 40, 40), np.uint8))
