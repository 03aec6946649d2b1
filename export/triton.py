"""A Triton Inference Server model repository from an exported hpatk classifier.

``write_triton_repo("model.onnx", "repo")`` writes::

    repo/<name>/config.pbtxt          platform onnxruntime_onnx, batching, I/O, ORT settings
    repo/<name>/1/model.onnx          the model, byte for byte (+ its external weights)
    repo/<name>/labels.txt            class names in output order (Triton's classification)
    repo/<name>/hpatk_metadata.json   the preprocessing contract: stains, size, enhancement,
                                      classes, thresholds (what a client must do first)

Triton serves the graph only: a client decodes, enhances and resizes the stains as
``hpatk.export.predict.load_image`` does, divides by 255, sends float32 (B, C, S, S) and
applies the thresholds. The folder is written beside its final place and renamed into it;
an existing ``<name>`` folder is replaced only when hpatk wrote it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpatk.core.errors import HpatkError

CONFIG = "config.pbtxt"
METADATA = "hpatk_metadata.json"
LABELS = "labels.txt"
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


@dataclass(frozen=True)
class TritonRepo:
    """What :func:`write_triton_repo` wrote: the model folder and its files."""

    folder: Path
    config: Path
    model: Path
    files: list[Path]


def triton_config(meta: dict[str, Any], *, name: str, max_batch: int = 16,
                  max_queue_delay_us: int = 5000, threads: int | None = None) -> str:
    """The ``config.pbtxt`` text of an hpatk classifier (Triton's ModelConfig, text format).

    Input and output dims are the model's without the batch axis (``max_batch_size``
    adds it); the ONNX Runtime settings are those of hpatk's own sessions
    (:func:`hpatk.export.runtime.session_options`): all graph optimisations (Triton's
    default when ``optimization.graph`` is unset), ``threads`` intra-op threads (0: one
    per core), one inter-op thread, sequential execution. int8 models run on the CPU.

    Shape:
        input ``meta["input_name"]`` FP32 [C, S, S]; output ``meta["output_name"]`` FP32 [K].
    """
    if max_batch < 1:
        raise HpatkError(f"--triton-max-batch must be at least 1, not {max_batch}")
    c, s, k = len(meta["stains"]), int(meta["input_size"]), len(meta["classes"])
    lines = [
        "# Written by hpatk export (hpatk " + str(meta.get("hpatk_version", "?")) + "); the "
        "preprocessing contract is hpatk_metadata.json",
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {int(max_batch)}",
        "input [",
        "  {",
        f'    name: "{meta["input_name"]}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {c}, {s}, {s} ]",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{meta["output_name"]}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {k} ]",
        f'    label_filename: "{LABELS}"',
        "  }",
        "]",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {int(max_queue_delay_us)}",
        "}",
    ]
    if meta.get("quantization"):  # hpatk's int8 models are calibrated for CPU kernels
        lines += ["instance_group [", "  {", "    count: 1", "    kind: KIND_CPU", "  }", "]"]
    for key, value in (("intra_op_thread_count", int(threads or 0)),
                       ("inter_op_thread_count", 1), ("execution_mode", 0)):
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def triton_target(repo: str | os.PathLike[str], name: str) -> Path:
    """``repo/name`` after checking it can be written (before any export work).

    Raises:
        HpatkError: a bad name, ``repo`` is a file, or ``repo/name`` exists and was not
            written by hpatk.
    """
    if not NAME_PATTERN.fullmatch(name):
        raise HpatkError(f"--triton-name '{name[:60]}' is not a usable model name (letters, "
                         f"digits, '_', '.', '-')")
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise HpatkError(f"--triton-repo '{repo}' is a file, not a folder")
    final = repo / name
    if final.exists() and not (final / METADATA).is_file():
        raise HpatkError(f"'{final}' exists and was not written by hpatk; refusing to replace "
                         f"it (choose another --triton-name)")
    return final


def write_triton_repo(model: str | os.PathLike[str], repo: str | os.PathLike[str], *,
                      name: str | None = None, max_batch: int = 16,
                      max_queue_delay_us: int = 5000,
                      threads: int | None = None) -> TritonRepo:
    """Write ``repo/<name>/`` for Triton's onnxruntime backend from an exported classifier.

    Args:
        model: an ``.onnx`` classifier written by ``hpatk export`` (checked first).
        repo: the model repository folder (created if missing).
        name: the Triton model name (default: the model file's stem).

    Raises:
        HpatkError: not an hpatk classifier, a bad name, or ``repo/<name>`` exists and was
            not written by hpatk.
    """
    from hpatk.core.io import current_umask
    from hpatk.export.runtime import external_files, read_metadata

    model = Path(model)
    meta = read_metadata(model)
    if meta["kind"] != "classifier":
        raise HpatkError(f"model '{model}' is a {meta['kind']}; a Triton repository is "
                         f"written for classifiers")
    final = triton_target(repo, name or model.stem)
    repo, name = final.parent, final.name
    config = triton_config(meta, name=name, max_batch=max_batch,
                           max_queue_delay_us=max_queue_delay_us, threads=threads)
    repo.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=repo))
    try:
        os.chmod(staged, 0o777 & ~current_umask())  # mkdtemp makes 0700: Triton may run as
        (staged / "1").mkdir()                      # another user (a container)
        shutil.copyfile(model, staged / "1" / "model.onnx")
        for extra in external_files(model):  # weights keep their file names: the graph
            shutil.copyfile(extra, staged / "1" / extra.name)  # refers to them by name
        (staged / CONFIG).write_text(config, encoding="utf-8")
        (staged / LABELS).write_text("".join(f"{n}\n" for n in meta["class_names"]),
                                     encoding="utf-8")
        (staged / METADATA).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n",
                                       encoding="utf-8")
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=repo))
            os.rename(final, old / name)
        try:
            os.rename(staged, final)
        except BaseException:
            if old is not None:  # put the previous repository back
                os.rename(old / name, final)
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    files = sorted(p for p in final.rglob("*") if p.is_file())
    return TritonRepo(final, final / CONFIG, final / "1" / "model.onnx", files)
