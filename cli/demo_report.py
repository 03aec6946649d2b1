"""The demo's one page: ``report.md`` and a self-contained ``report.html`` (pictures
embedded) telling the run top to bottom, from what the demo's steps wrote.

The page is built once as a list of blocks (heading, paragraph, picture, table, code)
and rendered twice, so the Markdown and the HTML cannot disagree. Sections whose files a
run did not produce (no GAN, say) are left out.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import re
import shlex
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpatk.core.io import atomic_open

Block = tuple[Any, ...]  # ("h1"|"h2"|"p"|"code", text) | ("img", path, alt) | ("table", head, rows)


@dataclass
class StepRecord:
    """One demo step: its ``hpatk`` arguments, wall time and what it printed."""

    args: list[str]
    seconds: float = 0.0
    output: str = ""

    @property
    def command(self) -> str:
        return "hpatk " + shlex.join(self.args)


class _Tee(io.TextIOBase):
    """Write through to a stream and keep a copy of the lines (bars' carriage-return
    updates are dropped from the copy)."""

    def __init__(self, stream: Any, limit: int = 200_000) -> None:
        self.stream, self.parts, self.size, self.limit = stream, [], 0, limit

    def write(self, text: str) -> int:
        self.stream.write(text)
        if self.size < self.limit and "\r" not in text:
            self.parts.append(text)
            self.size += len(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


@contextmanager
def capture(record: StepRecord) -> Iterator[None]:
    """Copy what a step prints (stdout and stderr) into ``record.output``, still showing it."""
    out, err = _Tee(sys.stdout), _Tee(sys.stderr)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        record.output = "".join(out.parts) + "".join(err.parts)


@dataclass
class DemoFacts:
    """What the report tells, gathered from the demo's folder and its steps."""

    out: Path
    steps: list[StepRecord]
    score: dict[str, Any]
    total_s: float
    settings: dict[str, Any] = field(default_factory=dict)


def _rel(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix()


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _step(facts: DemoFacts, *names: str) -> StepRecord | None:
    for s in facts.steps:
        if tuple(s.args[:len(names)]) == names:
            return s
    return None


def _lines_matching(text: str, pattern: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if re.search(pattern, line)]


def build_blocks(facts: DemoFacts) -> list[Block]:
    """The report's blocks, in reading order."""
    out = facts.out
    b: list[Block] = [("h1", "hpatk demo: the pipeline end to end on synthetic data")]
    b.append(("p", f"Every step below ran as the command shown; the whole demo took "
                   f"{facts.total_s:.0f} s. Settings: "
                   + ", ".join(f"{k} {v}" for k, v in facts.settings.items()) + "."))

    b.append(("h2", "1. The data"))
    synth = _step(facts, "data", "synth")
    if (out / "synth_preview.png").is_file():
        b.append(("p", "A synthetic dataset in the Kaggle HPA layout: procedurally rendered cells "
                       "(nucleus blue, microtubules red, ER yellow, the protein of interest green "
                       "following the labels), with the low contrast that motivates the paper."))
        b.append(("img", out / "synth_preview.png", "synthetic images"))
    wrote = _lines_matching(synth.output, r"^wrote ") if synth else []
    if wrote:
        b.append(("code", "\n".join(wrote)))

    enhance = out / "enhance"
    if (enhance / "metrics.csv").is_file():
        b.append(("h2", "2. Contrast enhancement"))
        b.append(("p", "Each method against the original image (mean ± sample sd over the "
                       "compared images); SSIM 1 means unchanged. CLAHE keeps the structure "
                       "(highest SSIM) while raising the contrast; the cache uses it."))
        rows = _read_csv(enhance / "metrics.csv")
        b.append(("table", ["method", "images", "MSE", "PSNR (dB)", "SSIM"],
                  [[r["method"], r["n"], _pm(r, "mse", 1), _pm(r, "psnr", 2), _pm(r, "ssim", 3)]
                   for r in rows]))
        if (enhance / "grid.png").is_file():
            b.append(("img", enhance / "grid.png", "original and each enhancement"))

    b += _counts_section(facts)
    b += _gan_section(facts)

    run = out / "run"
    b.append(("h2", "5. Training"))
    train = _step(facts, "train")
    summary = _lines_matching(train.output, r"^fold \S+: (epoch \d+/\d+: loss|best macro)") \
        if train else []
    if summary:
        b.append(("code", "\n".join(summary)))
    if (run / "curves.png").is_file():
        b.append(("img", run / "curves.png", "training curves"))
    if (run / "per_class_f1.png").is_file():
        b.append(("p", "Per-class F1 of the best macro-F1 checkpoint on the validation fold, at "
                       "threshold 0.5 and with per-class thresholds tuned on that fold."))
        b.append(("img", run / "per_class_f1.png", "per-class F1"))
    evaluate = _step(facts, "evaluate")
    if evaluate and evaluate.output.strip():
        b.append(("code", evaluate.output.strip()))

    b.append(("h2", "6. The exported model on the held-out test split"))
    predict = _step(facts, "predict")
    providers = _lines_matching(predict.output, r"ONNX Runtime providers|^note:|^warning:") \
        if predict else []
    if providers:
        b.append(("p", "ONNX Runtime ran with: " + "; ".join(
            p.replace("ONNX Runtime providers: ", "") for p in providers) + "."))
    if facts.score:
        b.append(("p", f"The submission, scored against the synthetic answers over the "
                       f"{facts.score['images']} test images that carry at least one of the "
                       f"model's classes, beside the trivial predictors (built from the "
                       f"training labels alone) on the same images:"))
        rows = [["the exported model", f"{facts.score['macro_f1']:.3f}",
                 f"{facts.score['micro_f1']:.3f}"]]
        rows += [[f"trivial: {name}", f"{m['macro_f1']:.3f}", f"{m['micro_f1']:.3f}"]
                 for name, m in facts.score.get("baselines", {}).items()]
        b.append(("table", ["predictor", "macro F1", "micro F1"], rows))

    b.append(("h2", "7. The steps"))
    b.append(("table", ["#", "command", "wall time (s)"],
              [[str(i), f"`{s.command}`", f"{s.seconds:.1f}"]
               for i, s in enumerate(facts.steps, 1)]))
    return b


def _pm(row: dict[str, str], metric: str, digits: int) -> str:
    mean, sd = float(row[f"{metric}_mean"]), float(row[f"{metric}_sd"])
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _counts_section(facts: DemoFacts) -> list[Block]:
    """Image counts: the cache's real images, the synthetic ones added, and what training used."""
    cache = facts.out / "cache.h5"
    if not cache.is_file():
        return []
    from hpatk.core.cache import cache_labels, synthetic_info
    from hpatk.core.classes import CLASS_NAMES

    real = len(cache_labels(cache))
    syn = synthetic_info(cache)
    b: list[Block] = [("h2", "3. The cache and the image counts")]
    text = f"The cache holds {real} real images (CLAHE, resized once)"
    n_syn = len(syn.get("class_index", []))
    if n_syn:
        per = {}
        for k in syn["class_index"].tolist():
            per[k] = per.get(k, 0) + 1
        text += (f" and {n_syn} synthetic images: "
                 + ", ".join(f"{n} of {CLASS_NAMES[k]} ({k})" for k, n in per.items()))
    b.append(("p", text + "."))
    train = _step(facts, "train")
    used = _lines_matching(train.output, r"^fold \S+: \d+ training images") if train else []
    if used:
        b.append(("p", "Training used: " + used[0].split(": ", 1)[-1] + "."))
    return b


def _gan_section(facts: DemoFacts) -> list[Block]:
    """Real images beside GAN samples: the training run's per-class grids (real images on
    top, samples below) and its generator records, else the grids a GAN step saved."""
    out = facts.out
    grids = sorted(out.glob("**/synthetic/class_*.png"))
    real = sorted(out.glob("**/samples_real.png"))
    if not grids and not real:
        return []
    b: list[Block] = [("h2", "4. GAN augmentation: real images and synthetic samples")]
    if grids:
        b.append(("p", "Per class: real training images of the fold (top row) and the "
                       "generator's samples that joined the training set (rows below)."))
        b += [("img", path, path.stem) for path in grids]
        for records in sorted(out.glob("**/synthetic.csv")):
            rows = _read_csv(records)
            cols = [c for c in ("class", "name", "synthesizer", "train_images", "samples",
                                "source", "seconds") if rows and c in rows[0]]
            if rows and cols:
                text = (f"Generators (`{_rel(records, out)}`): the training images each "
                        f"was fitted on, the samples it added, fitted or reused.")
                shared = {r.get("generator") for r in rows}
                if len(rows) > 1 and len(shared) == 1 and None not in shared:
                    text += (f" One generator made all {len(rows)} classes: its one fit's "
                             f"seconds show on every row, spent once.")
                b.append(("p", text))
                b.append(("table", cols, [[r[c] for c in cols] for r in rows]))
    else:
        for path in real:
            folder = path.parent
            fakes = sorted(folder.glob("samples_step*.png"),
                           key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
            b.append(("p", f"`{_rel(folder, out)}`: real training images, then the "
                           f"generator's samples after its last step."))
            b.append(("img", path, "real images"))
            if fakes:
                b.append(("img", fakes[-1], "GAN samples"))
            if (folder / "losses.png").is_file():
                b.append(("img", folder / "losses.png", "GAN losses"))
    b += _quality_blocks(facts)
    return b


def _quality_blocks(facts: DemoFacts) -> list[Block]:
    """``hpatk gan evaluate``'s numbers (its ``evaluation.csv``), one row per class."""
    out = facts.out
    b: list[Block] = []
    for records in sorted(out.glob("**/evaluation.csv")):
        rows = _read_csv(records)
        if not rows or "gan_train" not in rows[0]:
            continue
        step = _step(facts, "gan", "evaluate")
        how = f" (`{step.command}`, {step.seconds:.0f} s)" if step else ""
        b.append(("p", f"Sample quality{how}; `{_rel(records.parent, out)}/evaluation.md` "
                       f"explains each measure. GAN-train: a small CNN trained on the samples, "
                       f"scored on held-out real images (near real-on-real: the samples "
                       f"carry what a classifier needs); GAN-test: the real-trained CNN scored "
                       f"on the samples (near real-on-real: they look like their class); FD: "
                       f"Fréchet distance of that CNN's features, samples vs real training "
                       f"images, beside the real-vs-real floor; precision/recall: share of "
                       f"samples inside the real images' manifold and of real images inside "
                       f"the samples'; copies: share of samples nearer to a training image "
                       f"than held-out real images are."))
        b.append(("table", ["class", "real-on-real", "GAN-train", "GAN-test", "chance",
                            "FD (real floor)", "precision", "recall", "copies"],
                  [[r["class"], _num(r["real_on_real"]), _num(r["gan_train"]),
                    _num(r["gan_test"]), _num(r["chance"]),
                    f"{_num(r['fd'], 1)} ({_num(r['fd_real'], 1)})", _num(r["precision"]),
                    _num(r["recall"]), _num(r.get("copies_features", ""))] for r in rows]))
    return b


def _num(text: str, digits: int = 3) -> str:
    try:
        return f"{float(text):.{digits}f}"
    except ValueError:
        return text or "n/a"


# -- rendering --------------------------------------------------------------------------
def to_markdown(blocks: Sequence[Block], out: Path) -> str:
    """The blocks as Markdown; pictures link to their files, relative to ``out``."""
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            lines += [f"# {block[1]}", ""]
        elif kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "code":
            lines += ["```", block[1], "```", ""]
        elif kind == "img":
            lines += [f"![{block[2]}]({_rel(block[1], out)})", ""]
        elif kind == "table":
            head, rows = block[1], block[2]
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Escape, then `code` spans (the only inline markup the blocks use)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def to_html(blocks: Sequence[Block], title: str) -> str:
    """The blocks as one HTML page with every picture embedded (data: URIs): it opens
    offline, anywhere, on its own."""
    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "code":
            body.append(f"<pre>{html.escape(block[1])}</pre>")
        elif kind == "img":
            data = base64.b64encode(Path(block[1]).read_bytes()).decode("ascii")
            body.append(f'<img alt="{html.escape(block[2])}" src="data:image/png;base64,{data}">')
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                           for r in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
             "padding:0 1rem;line-height:1.45;color:#222}img{max-width:100%;display:block;"
             "margin:.5rem 0}table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px "
             "solid #ccc;padding:.2rem .5rem;text-align:left}pre{background:#f5f5f5;"
             "padding:.5rem;overflow-x:auto}code{background:#f5f5f5;padding:0 .2rem}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{style}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_demo_report(facts: DemoFacts) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into the demo's folder (atomically).

    Returns:
        The two paths.
    """
    blocks = build_blocks(facts)
    md_path, html_path = facts.out / "report.md", facts.out / "report.html"
    with atomic_open(md_path, "w", encoding="utf-8") as f:
        f.write(to_markdown(blocks, facts.out))
    with atomic_open(html_path, "w", encoding="utf-8") as f:
        f.write(to_html(blocks, blocks[0][1]))
    return md_path, html_path
