"""The demo's one-page report (cli/demo_report.py): the story in order, image counts with
the synthetic images, providers, each step's command and time, and an HTML page that
stands on its own."""

from __future__ import annotations

import base64
import re
import shutil
import sys

import cv2
import numpy as np
import pytest
from hpatk.cli.demo_report import DemoFacts, StepRecord, capture, write_demo_report


def _png(path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), value, np.uint8))


@pytest.fixture
def demo_folder(tmp_path, synth_cache_with_synthetic):
    out = tmp_path / "demo-run"
    out.mkdir()
    (out / "cache.h5").symlink_to(synth_cache_with_synthetic)
    _png(out / "synth_preview.png", 10)
    _png(out / "enhance" / "grid.png", 20)
    (out / "enhance" / "metrics.csv").write_text(
        "method,n,mse_mean,mse_sd,psnr_mean,psnr_sd,ssim_mean,ssim_sd,config\n"
        "clahe,16,1294.4,249.9,17.09,0.90,0.501,0.023,name=clahe\n")
    _png(out / "run" / "synthetic" / "class_00.png", 30)
    _png(out / "run" / "synthetic" / "class_25.png", 40)
    _png(out / "run" / "curves.png", 60)
    _png(out / "run" / "per_class_f1.png", 70)
    steps = [
        StepRecord(["data", "synth", "d"], 3.25, "wrote d: 100 train + 25 test images\n"),
        StepRecord(["train", "--data", "c.h5", "--aug", "gan"], 40.0,
                   "fold 0: class 0 (Nucleoplasm): fitting dcgan on 30 training images\n"
                   "fold 0: 80 training images (12 synthetic), 20 validation, 5 classes, "
                   "resnet18 on cpu\nfold 0: epoch 1/2:  50% 1/2 batch\n"
                   "fold 0: epoch 1/2: loss 0.2 val_loss 0.3\nfold 0: best macro F1 0.5\n"),
        StepRecord(["predict", "m.onnx", "d", "--out", "s.csv"], 2.0,
                   "ONNX Runtime providers: CPUExecutionProvider\npredicted 25 images\n"),
    ]
    score = {"images": 25, "macro_f1": 0.61, "micro_f1": 0.7, "baselines": {
        "every class on every image": {"macro_f1": 0.35, "micro_f1": 0.38}}}
    return DemoFacts(out, steps, score, 45.5, settings={"backbone": "resnet18"})


@pytest.fixture
def synth_cache_with_synthetic(synth_cache, tmp_path):
    """A copy of the shared cache with 3 synthetic images of class 0 added."""
    from hpatk.core.cache import add_synthetic

    cache = tmp_path / "cache.h5"
    shutil.copy(synth_cache, cache)
    add_synthetic(cache, np.zeros((3, 4, 64, 64), np.uint8), 0, generator="g.pt", fold=0,
                  seed=0)
    return cache


def test_report_tells_the_story_in_order(demo_folder):
    md_path, html_path = write_demo_report(demo_folder)
    md = md_path.read_text()
    heads = re.findall(r"^## (.*)$", md, re.M)
    assert [h.split(".")[0] for h in heads] == ["1", "2", "3", "4", "5", "6", "7"]
    assert "The cache holds 96 real images" in md
    assert "and 3 synthetic images: 3 of Nucleoplasm (0)." in md
    assert "Training used: 80 training images (12 synthetic), 20 validation" in md
    assert "ONNX Runtime ran with: CPUExecutionProvider." in md
    assert "over the 25 test images" in md
    assert "| the exported model | 0.610 | 0.700 |" in md
    assert "| trivial: every class on every image | 0.350 | 0.380 |" in md
    assert "| 2 | `hpatk train --data c.h5 --aug gan` | 40.0 |" in md
    assert "| clahe | 16 | 1294.4 ± 249.9 | 17.09 ± 0.90 | 0.501 ± 0.023 |" in md
    # each class's real-vs-synthetic grid that hpatk train --aug gan saved
    assert "run/synthetic/class_00.png" in md and "run/synthetic/class_25.png" in md
    assert "took 46 s" in md
    # training: the epoch summaries and the result, not the progress lines
    assert "```\nfold 0: epoch 1/2: loss 0.2 val_loss 0.3\nfold 0: best macro F1 0.5\n```" in md
    assert "50% 1/2 batch" not in md


def test_the_runs_synthetic_grids_come_first(demo_folder):
    run = demo_folder.out / "run"
    _png(run / "synthetic" / "class_00.png", 80)
    _png(run / "synthetic" / "class_25.png", 90)
    (run / "synthetic.csv").write_text(
        "fold,class,name,synthesizer,key,train_images,samples,source,seconds,generator\n"
        "0,0,Nucleoplasm,dcgan,abc,30,200,fitted,12.5,g.pt\n")
    md = write_demo_report(demo_folder)[0].read_text()
    assert "run/synthetic/class_00.png" in md and "run/synthetic/class_25.png" in md
    assert "samples_real.png" not in md  # the run's grids replace the per-step ones
    assert "| 0 | Nucleoplasm | dcgan | 30 | 200 | fitted | 12.5 |" in md
    assert "One generator made all" not in md  # one row: nothing shared to explain


def test_a_conditional_generators_time_is_said_once_spent(demo_folder):
    run = demo_folder.out / "run"
    (run / "synthetic.csv").write_text(
        "fold,class,name,synthesizer,key,train_images,samples,source,seconds,generator\n"
        "0,0,Nucleoplasm,cdcgan,k,30,200,fitted,289.0,g.pt\n"
        "0,25,Cytosol,cdcgan,k,20,200,fitted,289.0,g.pt\n")
    md = write_demo_report(demo_folder)[0].read_text()
    assert "One generator made all 2 classes: its one fit's seconds show on every row" in md


def test_gan_quality_numbers_are_in_the_report(demo_folder):
    from hpatk.core.gan_evaluate import COLUMNS

    ev = demo_folder.out / "gan-eval"
    ev.mkdir()
    values = dict.fromkeys(COLUMNS, "")
    values.update({"real_on_real": "0.9", "gan_train": "0.71234", "gan_test": "0.5",
                   "chance": "0.54", "fd": "12.345", "fd_real": "1.1", "precision": "0.25",
                   "recall": "0.125", "copies_features": "0"})
    head = ["fold", "synthesizer", *COLUMNS]
    rows = [dict(values, fold="0", synthesizer="dcgan", **{"class": c})
            for c in ("all", "Nucleoplasm")]
    (ev / "evaluation.csv").write_text(
        ",".join(head) + "\n" + "".join(",".join(str(r[h]) for h in head) + "\n"
                                        for r in rows))
    demo_folder.steps.append(StepRecord(["gan", "evaluate", "run", "--out", "gan-eval"], 9.0))
    md = write_demo_report(demo_folder)[0].read_text()
    gan = md.split("## 4.")[1].split("## 5.")[0]  # in the GAN section
    assert "(`hpatk gan evaluate run --out gan-eval`, 9 s)" in gan
    assert "| Nucleoplasm | 0.900 | 0.712 | 0.500 | 0.540 | 12.3 (1.1) | 0.250 | 0.125 | 0.000 |" \
        in gan
    assert "| all | 0.900 |" in gan


def test_html_is_self_contained(demo_folder):
    _, html_path = write_demo_report(demo_folder)
    page = html_path.read_text()
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) == 6  # preview, grid, 2 GAN grids, curves, per-class: no file links
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    first = base64.b64decode(sources[0].split(",", 1)[1])
    assert first == (demo_folder.out / "synth_preview.png").read_bytes()
    assert "href=" not in page and "<script" not in page
    assert "<code>hpatk train --data c.h5 --aug gan</code>" in page
    assert not [p for p in demo_folder.out.iterdir() if p.name.startswith(".")]


def test_sections_without_files_are_left_out(tmp_path):
    out = tmp_path / "bare"
    out.mkdir()
    md_path, _ = write_demo_report(DemoFacts(out, [StepRecord(["evaluate", "r"], 1.0, "ok")],
                                             {}, 1.0))
    md = md_path.read_text()
    assert "GAN" not in md and "Contrast enhancement" not in md and "![" not in md


def test_capture_keeps_lines_not_bar_updates(capsys):
    record = StepRecord(["x"])
    with capture(record):
        print("one line")
        sys.stderr.write("\r 50%|#####     |")
        print("to stderr", file=sys.stderr)
    assert record.output == "one line\nto stderr\n"
    assert "one line" in capsys.readouterr().out  # still shown


def test_demo_scores_the_submission_beside_the_trivial_predictors(tmp_path):
    """The demo's score against scikit-learn's F1, on a hand-made answer key: images with
    none of the model's classes are left out, the trivial predictors come from train.csv."""
    from hpatk.cli.demo import score_submission
    from sklearn.metrics import f1_score

    def write(name, column, rows):
        (tmp_path / name).write_text("Id," + column + "\n" + "".join(
            f"{i},{t}\n" for i, t in rows))

    write("train.csv", "Target", [("a", "0"), ("b", "0 2"), ("c", "2"), ("d", "0 5")])
    write("test_labels.csv", "Target", [("t1", "0"), ("t2", "2"), ("t3", "5"), ("t4", "0 2")])
    write("sub.csv", "Predicted", [("t1", "0"), ("t2", "0"), ("t3", "2"), ("t4", "0 2")])
    score = score_submission(tmp_path / "sub.csv", tmp_path, [0, 2])
    y = np.array([[1, 0], [0, 1], [1, 1]])  # t3 carries neither class 0 nor 2: left out
    p = np.array([[1, 0], [1, 0], [1, 1]])
    assert score["images"] == 3
    assert score["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert score["micro_f1"] == pytest.approx(f1_score(y, p, average="micro"))
    every, most = score["baselines"].values()
    assert every["macro_f1"] == pytest.approx(f1_score(y, np.ones_like(y), average="macro"))
    most_frequent = np.array([[1, 0]] * 3)  # class 0: 3 training images, class 2: 2
    assert most["macro_f1"] == pytest.approx(
        f1_score(y, most_frequent, average="macro", zero_division=0))
    assert list(score["baselines"])[1] == (
        "the most frequent training class, Nucleoplasm (0), on every image")
