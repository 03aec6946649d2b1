"""hpatk experiment backbones: the paper's Table 1 shape from runs on shared folds."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from helpers import invoke
from hpatk.core.run import read_metrics

BACKBONES = ["timm:test_resnet", "timm:test_efficientnet"]


@pytest.fixture(scope="module")
def cache(top5_dataset) -> Path:
    return top5_dataset(n=36, size=32, seed=3)[1]


@pytest.fixture(scope="module")
def table(cache, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("exp") / "t1"
    r = invoke("experiment", "backbones", "--data", cache, "--backbones", ",".join(BACKBONES),
               "--sizes", 32, "--folds", 3, "--fold-subset", "0,1", "--epochs", 1,
               "--batch-size", 8, "--classes", "top5", "--aug", "none", "--out", out)
    return out, r.output


@pytest.mark.slow
def test_table_files(table):
    out, output = table
    for name in ("table1.md", "table1.csv", "table1.png", "results.csv", "folds.csv"):
        assert (out / name).is_file(), name
    for b in BACKBONES:
        for k in (0, 1):
            assert (out / "runs" / f"{b}_32" / f"fold_{k}" / "best_macro_f1.pt").is_file()
        assert not (out / "runs" / f"{b}_32" / "fold_2").exists()
    assert "| model | 32 px |" in output


@pytest.mark.slow
def test_table_values_are_mean_and_sd_over_folds(table):
    out, _ = table
    md = (out / "table1.md").read_text().splitlines()
    with open(out / "table1.csv", newline="") as f:
        rows = {r["backbone"]: r for r in csv.DictReader(f)}
    for b in BACKBONES:
        bests = [max(read_metrics(out / "runs" / f"{b}_32" / f"fold_{k}" / "metrics.csv"),
                     key=lambda r: (r["val_macro_f1"], -r["epoch"])) for k in (0, 1)]
        f1 = [r["val_macro_f1"] for r in bests]
        eq8 = [r["val_paper_macro_f1"] for r in bests]
        assert float(rows[b]["val_paper_macro_f1_mean"]) == pytest.approx(np.mean(eq8), abs=1e-6)
        mean, sd = np.mean(f1), np.std(f1, ddof=1)
        assert float(rows[b]["val_macro_f1_mean"]) == pytest.approx(mean, abs=1e-6)
        assert float(rows[b]["val_macro_f1_sd"]) == pytest.approx(sd, abs=1e-6)
        assert rows[b]["folds"] == "2"
        line = [ln for ln in md if ln.startswith(f"| {b} |")][0]
        assert f"{mean:.3f} +- {sd:.3f}" in line


@pytest.mark.slow
def test_every_run_used_the_same_folds(table):
    out, _ = table
    shared = (out / "folds.csv").read_text()
    for b in BACKBONES:
        for k in (0, 1):
            cfg = (out / "runs" / f"{b}_32" / f"fold_{k}" / "config.yaml").read_text()
            assert f"folds_file: {out / 'folds.csv'}" in cfg
            assert (out / "runs" / f"{b}_32" / f"fold_{k}" / "folds.csv").read_text() == shared


@pytest.mark.slow
def test_rerun_reuses_finished_runs(table, cache):
    out, _ = table
    ckpt = out / "runs" / f"{BACKBONES[0]}_32" / "fold_0" / "last.pt"
    before = ckpt.stat().st_mtime_ns
    invoke("experiment", "backbones", "--data", cache, "--backbones", BACKBONES[0],
           "--sizes", 32, "--folds", 3, "--fold-subset", "0", "--epochs", 1, "--batch-size", 8,
           "--classes", "top5", "--aug", "none", "--out", out)
    assert ckpt.stat().st_mtime_ns == before


@pytest.mark.parametrize("args, message", [
    (["--sizes", "64"], "--size 64"),
    (["--backbones", "resnet5"], "did you mean"),
    (["--fold-subset", "4"], "--fold-subset"),
])
def test_experiment_errors(cache, tmp_path, args, message):
    r = invoke("experiment", "backbones", "--data", cache, "--folds", 3, "--epochs", 1,
               "--out", tmp_path / "x", *(["--sizes", "32"] if "--sizes" not in args else []),
               *args, ok=False)
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output
