"""``hpatk train`` under ``torchrun`` (DDP, gloo on CPU, 2 processes, each launch with a
hard timeout): the sharded sampler, the collectives, one run folder equal in kind to a
single process's, identical parameters on every rank, metrics equal to a single-process
``hpatk evaluate``, resume, and a NaN or an exception on one rank stopping both."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hpatk.core.batching import EpochBatchSampler

TINY = "timm:test_resnet"
LAUNCH_TIMEOUT_S = 300  # a hang fails the test instead of the suite

# Runs `hpatk` in each rank; records the model every infer() call sees (the validation
# after each epoch, then the threshold tuning), so the test can compare ranks.
DRIVER = """
import os, sys
import torch
from hpatk.core import engine

spy_dir, calls = os.environ.get("SPY_DIR"), [0]
original = engine.infer

def infer(model, *args, **kwargs):
    if spy_dir:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        torch.save(state, os.path.join(spy_dir, f"rank{os.environ['RANK']}_{calls[0]}.pt"))
        calls[0] += 1
    return original(model, *args, **kwargs)

engine.infer = infer

if __name__ == "__main__":  # not in the cache's spawned workers, which import this file
    from hpatk.cli.main import main
    main(sys.argv[1:])
"""

# A loss that fails on rank 1 only, after `after` calls: NaN, or an exception.
PLUGIN = """
import os
import torch
from hpatk.core import hookimpl

class FailOnRank1(torch.nn.Module):
    def __init__(self, after=5, how="nan"):
        super().__init__()
        self.after, self.how, self.calls = after, how, 0

    def forward(self, logits, targets):
        self.calls += 1
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
        if os.environ.get("RANK") == "1" and self.calls > self.after:
            if self.how == "raise":
                raise RuntimeError("injected failure on rank 1")
            return loss * float("nan")
        return loss

@hookimpl
def hpatk_register_losses(register):
    register("fail_on_rank1", FailOnRank1)
"""


def torchrun(args: list[object], tmp: Path, *, nproc: int = 2, env: dict[str, str] | None = None,
             script: str = DRIVER, timeout: float = LAUNCH_TIMEOUT_S
             ) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node=N driver.py ARGS``; the whole process group
    is killed if it outlives ``timeout``."""
    driver = tmp / "driver.py"
    driver.write_text(script)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(driver), *map(str, args)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=full_env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # torchrun stops its workers (each in a session of its own)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout} s:\n{out[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def common(cache: Path) -> list[object]:
    # 40 images, fold 0 of 5: 32 training (4 steps of a global batch of 8), 8 validation
    return ["train", "--data", cache, "--backbone", TINY, "--classes", "top5", "--aug",
            "classic", "--batch-size", 8, "--max-batch-size", 8, "--seed", 3,
            "--device", "cpu", "--workers", 0]


@pytest.fixture(scope="module")
def ddp_run(small_cache, tmp_path_factory) -> tuple[Path, Path, str]:
    """A 2-epoch run of 2 processes: (run folder, folder of the ranks' models, output)."""
    tmp = tmp_path_factory.mktemp("ddp-run")
    spy = tmp / "spy"
    spy.mkdir()
    r = torchrun([*common(small_cache), "--epochs", 2, "--out", tmp / "run"], tmp,
                 env={"SPY_DIR": str(spy)})
    assert r.returncode == 0, r.stdout[-4000:]
    return tmp / "run", spy, r.stdout


# -- the sampler: no processes needed -------------------------------------------------------
@pytest.mark.parametrize("n", [9, 31, 32, 33, 64])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_sharded_sampler_covers_every_image_once_per_epoch(n, world):
    per_rank = 4
    samplers = [EpochBatchSampler(n, per_rank * world, seed=7, rank=r, world_size=world)
                for r in range(world)]
    orders = []
    for epoch in range(3):
        batches = []
        for s in samplers:
            s.set_epoch(epoch)
            batches.append(list(s))
        steps = {len(b) for b in batches}
        assert steps == {len(samplers[0])}, "every rank makes the same number of steps"
        seen = [i for rank_batches in batches for b in rank_batches for i in b]
        assert sorted(seen) == list(range(n)), "each image exactly once over the ranks"
        # each step splits one global batch: per-rank parts differ by at most one image,
        # and no rank trains on a single image (BatchNorm)
        for step in zip(*batches, strict=True):
            sizes = [len(b) for b in step]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 2
        # all but the last step take exactly global / world images on each rank
        for step in list(zip(*batches, strict=True))[:-1]:
            assert [len(b) for b in step] == [per_rank] * world
        orders.append(seen)
    assert orders[0] != orders[1], "reshuffled per epoch"
    samplers[0].set_epoch(0)
    assert [i for b in samplers[0] for i in b] == [i for b in list(samplers[0]) for i in b]


def test_sharded_evaluation_concatenates_in_dataset_order():
    for n, world in [(19, 2), (8, 3), (1, 2)]:
        parts = [[i for b in EpochBatchSampler(n, 8, shuffle=False, rank=r, world_size=world)
                  for i in b] for r in range(world)]
        assert sum(parts, []) == list(range(n))


def test_sampler_refuses_a_global_batch_that_does_not_divide():
    with pytest.raises(ValueError, match="does not divide over 2"):
        EpochBatchSampler(32, 9, rank=0, world_size=2)


# -- collectives in 2 gloo processes ---------------------------------------------------------
COLLECTIVES = """
import json, os, sys
import numpy as np
from pathlib import Path
from hpatk.core import distributed as ddp

out = Path(sys.argv[1])
with ddp.distributed("gloo", 60) as d:
    rank = d.rank
    rows = np.arange(3 * rank * 2, dtype=np.float32).reshape(3 * rank, 2)  # rank 0: none
    gathered = ddp.all_gather_rows(rows)
    with ddp.main_first():
        if rank == 0:
            (out / "written-by-0").write_text("x")
        seen = (out / "written-by-0").exists()
    failed = ddp.agree(rank != 1)
    total = ddp.all_sum([rank + 1.0, 1.0])
    (out / f"rank{rank}.json").write_text(json.dumps({
        "gathered": gathered.tolist(), "seen": seen, "failed": failed, "total": total,
        "world": d.world_size, "main": ddp.is_main()}))
"""


@pytest.mark.slow
def test_collectives_in_two_processes(tmp_path):
    r = torchrun([tmp_path], tmp_path, script=COLLECTIVES, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:]
    res = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    expected = np.arange(6, dtype=np.float32).reshape(3, 2).tolist()  # rank 1's 3 rows only
    for k, d in enumerate(res):
        assert d["gathered"] == expected
        assert d["seen"] is True  # rank 0 ran the body before rank 1
        assert d["failed"] == [1]
        assert d["total"] == [3.0, 2.0]
        assert d["world"] == 2 and d["main"] is (k == 0)


# -- training ----------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_run_folder_is_a_single_process_run_folder(ddp_run, small_cache, tmp_path):
    from click.testing import CliRunner
    from hpatk.cli.main import cli
    from hpatk.core.run import read_metrics

    run, _, output = ddp_run
    single = tmp_path / "single"
    r = CliRunner().invoke(cli, [str(a) for a in [*common(small_cache), "--epochs", 2,
                                                   "--out", single]])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in single.iterdir())
    assert (run / "folds.csv").read_text() == (single / "folds.csv").read_text()
    strip = [line for line in (run / "config.yaml").read_text().splitlines()
             if not line.startswith(("out:", "#"))]
    assert strip == [line for line in (single / "config.yaml").read_text().splitlines()
                     if not line.startswith(("out:", "#"))]
    rows = read_metrics(run / "metrics.csv")
    assert [row["epoch"] for row in rows] == [1, 2]
    assert [row["batch_size"] for row in rows] == [8, 8]  # the global batch
    # rank 0 alone prints: one summary line per epoch, one result line
    assert output.count("fold 0: epoch 2/2: loss") == 1
    assert output.count("best macro F1") == 1
    assert not list(run.glob("*.tmp*")) and not list(run.parent.glob(".*tmp*"))


@pytest.mark.slow
def test_every_rank_holds_the_checkpointed_parameters(ddp_run):
    from hpatk.core.checkpoint import load_checkpoint

    run, spy, _ = ddp_run
    n = len(list(spy.glob("rank0_*.pt")))
    assert n == 3 and len(list(spy.glob("rank1_*.pt"))) == n  # 2 validations + tuning
    for i in range(n):
        a = torch.load(spy / f"rank0_{i}.pt", weights_only=True)
        b = torch.load(spy / f"rank1_{i}.pt", weights_only=True)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (i, k)
    last = load_checkpoint(run / "last.pt")["state_dict"]
    after_training = torch.load(spy / "rank1_1.pt", weights_only=True)  # epoch 2's validation
    for k, v in last.items():
        assert torch.equal(v, after_training[k]), k
    moved = [k for k, v in last.items() if v.is_floating_point()
             and not torch.equal(v, torch.load(spy / "rank1_0.pt", weights_only=True)[k])]
    assert moved, "the second epoch trained"


@pytest.mark.slow
def test_run_metrics_equal_a_single_process_evaluate(ddp_run):
    from hpatk.core.evaluate import evaluate_run
    from hpatk.core.run import read_metrics

    run, _, _ = ddp_run
    ev = evaluate_run(run, device="cpu")
    assert ev.n == 8  # the whole validation fold, no duplicates from padding
    rows = read_metrics(run / "metrics.csv")
    best = max(rows, key=lambda r: (r["val_macro_f1"], -r["epoch"]))
    assert ev.at_half["macro_f1"] == pytest.approx(best["val_macro_f1"], abs=1e-6)
    assert ev.at_half["micro_f1"] == pytest.approx(best["val_micro_f1"], abs=1e-6)
    assert ev.at_half["accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-6)
    thr = json.loads((run / "thresholds.json").read_text())
    assert ev.tuned is not None
    assert thr["macro_f1_tuned"] == pytest.approx(ev.tuned["macro_f1"], abs=1e-6)
    assert thr["macro_f1_at_0_5"] == pytest.approx(ev.at_half["macro_f1"], abs=1e-6)


@pytest.mark.slow
def test_resume_under_ddp_continues_at_the_right_epoch(ddp_run, small_cache, tmp_path):
    """1 epoch, then --resume to 2, equals the straight 2-epoch run (each rank's RNG and
    the sampler continue where they were)."""
    from hpatk.core.checkpoint import load_checkpoint
    from hpatk.core.run import METRIC_COLUMNS, read_metrics

    run, _, _ = ddp_run
    split = tmp_path / "split"
    # from the dataset folder: rank 0 builds the cache (the same one as small_cache's)
    # while rank 1 waits, then both read it
    args = common(small_cache)
    args[args.index(small_cache)] = small_cache.parent / "data"
    r = torchrun([*args, "--size", 32, "--cache-dir", tmp_path / "caches", "--epochs", 1,
                  "--out", split], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:]
    assert r.stdout.count("building ") == 1 and "cache up to date" not in r.stdout
    assert len(list((tmp_path / "caches").glob("*.h5"))) == 1
    assert len(load_checkpoint(split / "last.pt")["rng_ranks"]) == 2
    r = torchrun(["train", "--resume", "--epochs", 2, "--out", split], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:]
    assert r.stdout.count("cache up to date") == 1 and "building " not in r.stdout
    assert "epoch 1/2" not in r.stdout and r.stdout.count("epoch 2/2: loss") == 1
    a, b = read_metrics(run / "metrics.csv"), read_metrics(split / "metrics.csv")
    assert [x["epoch"] for x in b] == [1, 2]
    for x, y in zip(a, b, strict=True):
        for k in METRIC_COLUMNS[:-1]:
            assert x[k] == pytest.approx(y[k], rel=1e-5, abs=1e-7), k
    wa = load_checkpoint(run / "last.pt")["state_dict"]
    wb = load_checkpoint(split / "last.pt")["state_dict"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["nan", "raise"])
def test_failure_on_one_rank_stops_both(small_cache, tmp_path, how):
    from hpatk.core.checkpoint import load_checkpoint
    from hpatk.core.run import read_metrics

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "fail_on_rank1.py").write_text(textwrap.dedent(PLUGIN))
    out = tmp_path / "run"
    # per rank and epoch: 4 training steps + 1 validation batch = 5 loss calls, so the
    # 6th (epoch 2, step 1) fails on rank 1
    args = [*common(small_cache), "--loss", "fail_on_rank1", "--loss-param", "after=5",
            "--loss-param", f"how={how}", "--epochs", 3, "--out", out]
    r = torchrun(args, tmp_path, env={"HPATK_PLUGINS_DIR": str(plugins)}, timeout=240)
    assert r.returncode != 0
    assert [row["epoch"] for row in read_metrics(out / "metrics.csv")] == [1]
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    if how == "nan":  # both ranks agree at the same step; rank 0 says it once
        message = "epoch 2/3: training loss is not finite on rank 1 at step 1"
        assert r.stdout.count(message) == 1, r.stdout[-3000:]
        assert "last good checkpoint" in r.stdout
    else:  # rank 1's traceback (a bug in a plugin); rank 0 stops with one line at most
        assert "injected failure on rank 1" in r.stdout
        assert "[rank0]: Traceback" not in r.stdout, r.stdout[-3000:]


def test_only_rank_0_shows_progress(monkeypatch, capsys):
    from hpatk.core.progress import progress

    monkeypatch.setenv("RANK", "1")
    assert list(progress(range(5), desc="epoch")) == list(range(5))
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert list(progress(range(5), desc="epoch")) == list(range(5))
    assert "epoch" in capsys.readouterr().err


EXPERIMENTS = {  # command -> (arguments, results.csv rows, run folders)
    "backbones": (["--backbones", f"{TINY},timm:test_efficientnet", "--sizes", 32,
                   "--fold-subset", "0,1", "--aug", "none"], 4,
                  [f"{b}_32/fold_{k}" for b in (TINY, "timm:test_efficientnet") for k in (0, 1)]),
    "gan-vs-classic": (["--aug", "none", "--backbone", TINY, "--fold-subset", "0,1",
                        "--real-per-class", 8], 8,  # 2 arms x 2 folds x (train, val)
                       [f"{a}/fold_{k}" for a in ("classic", "none") for k in (0, 1)]),
}


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(EXPERIMENTS))
def test_experiment_jobs_spread_over_ranks(small_cache, tmp_path, command):
    """4 jobs over 2 processes: each trained once, and a single process rerunning the
    command finds every run finished and writes the same results."""
    from click.testing import CliRunner
    from hpatk.cli.main import cli

    extra, n_rows, runs = EXPERIMENTS[command]
    out = tmp_path / "t"
    args = ["experiment", command, "--data", small_cache, *extra, "--folds", 3, "--epochs", 1,
            "--batch-size", 8, "--classes", "top5", "--device", "cpu", "--out", out]
    r = torchrun(args, tmp_path)
    assert r.returncode == 0, r.stdout[-4000:]
    assert r.stdout.count("epoch 1/1: loss") == 4, "every job trained once, by one rank"
    table = "| model |" if command == "backbones" else "# Classic vs synthetic augmentation"
    assert r.stdout.count(table) == 1, "rank 0 alone prints the table"
    results = (out / "results.csv").read_text()
    assert len(results.splitlines()) == 1 + n_rows
    for run in runs:
        assert (out / "runs" / run / "thresholds.json").is_file(), run
    (out / "results.csv").unlink()
    single = CliRunner().invoke(cli, [str(a) for a in args])
    assert single.exit_code == 0, single.output
    assert "epoch 1/1" not in single.output, "a single process reuses every finished run"
    assert (out / "results.csv").read_text() == results


def test_launch_checks_name_the_option(monkeypatch):
    from hpatk.core import distributed as ddp
    from hpatk.core.errors import HpatkError
    from hpatk.core.train_config import TrainConfig

    monkeypatch.setattr(ddp, "_current", ddp.Dist(rank=0, world_size=4))
    cfg = TrainConfig(batch_size=12, max_batch_size=48, batch_double_every=1)
    ddp.check_divides([cfg.batch_size_at(e) for e in range(3)])  # 12, 24, 48
    with pytest.raises(HpatkError, match=r"--batch-size: the global batch 30 does not "
                                         r"divide over 4 processes; use multiples of 4"):
        ddp.check_divides([32, 30])
    with pytest.raises(HpatkError, match="--sync-bn needs CUDA"):
        ddp.check_sync_bn(True, torch.device("cpu"))
    ddp.check_sync_bn(False, torch.device("cpu"))
    assert ddp.spread(list(range(10))) == [0, 4, 8]
    monkeypatch.setattr(ddp, "_current", ddp.Dist())
    ddp.check_divides([30])  # one process: any batch
    ddp.check_sync_bn(True, torch.device("cpu"))  # one process: nothing to synchronise
    assert ddp.spread(list(range(3))) == [0, 1, 2]


@pytest.mark.slow
def test_synthesizer_generators_spread_over_ranks(small_cache, tmp_path):
    """--aug meannoise under 2 processes: the 5 per-class generators are fitted once each,
    by the two ranks round robin; rank 0 alone writes synthetic.csv, which says so; a
    single process with the same settings then reuses every sample."""
    import csv
    import shutil

    from click.testing import CliRunner
    from hpatk.cli.main import cli
    from hpatk.core.cache import read_cache_meta

    cache = tmp_path / "cache.h5"
    shutil.copy(small_cache, cache)
    args = [*common(cache), "--batch-aug", "none", "--synthetic-per-class", 4, "--epochs", 1]
    args[args.index("--aug") + 1] = "meannoise"
    r = torchrun([*args, "--out", tmp_path / "run"], tmp_path)
    assert r.returncode == 0, r.stdout[-4000:]
    with open(tmp_path / "run" / "synthetic.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(x["class"]) for x in rows] == [0, 25, 21, 2, 23]
    assert {x["source"] for x in rows} == {"fitted"}
    batches = read_cache_meta(cache)["synthetic"]
    assert len(batches) == 5 and sorted(b["class_index"] for b in batches) == [0, 2, 21, 23, 25]
    assert r.stdout.count("fitting meannoise") == 5  # each generator once, not once per rank
    single = CliRunner().invoke(cli, [str(a) for a in [*args, "--out", tmp_path / "one"]])
    assert single.exit_code == 0, single.output
    with open(tmp_path / "one" / "synthetic.csv") as f:
        assert {x["source"] for x in csv.DictReader(f)} == {"reused samples"}
