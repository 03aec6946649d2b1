"""``hpatk export`` and ``hpatk predict``."""

from __future__ import annotations

import time

import click
from hpatk.core.threads import threads_option
from hpatk.core.tta import TTA

# Kept in sync with hpatk.export.runtime (not imported here: it pulls numpy/onnxruntime).
PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="The .onnx file to write (replaced only when every check passes); "
                   "required unless CHECKPOINT is an exported .onnx and --triton-repo is given.")
@click.option("--tta", type=click.Choice(TTA), default="none", show_default=True,
              help="Classifiers and runs: bake test-time augmentation into the graph (flips: "
                   "the mean over the 4 horizontal/vertical flips).")
@click.option("--opset", type=click.IntRange(7, 30), default=None,
              help="ONNX opset [default: 17 with --legacy, 18 with --dynamo].")
@click.option("--dynamo/--legacy", default=None,
              help="Force torch's torch.export-based exporter (needs onnxscript) or the "
                   "TorchScript one [default: TorchScript, dynamo where it cannot convert "
                   "the model].")
@click.option("--probabilities/--logits", default=True, show_default=True,
              help="Classifiers: end the graph with a sigmoid, or output logits.")
@click.option("--size", type=click.IntRange(8), default=None,
              help="Classifiers: input size in pixels [default: the training size].")
@click.option("--no-verify", is_flag=True,
              help="Skip the parity check against PyTorch (onnx.checker still runs).")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Classifiers: write an int8 (QDQ) model, calibrated on --calibration.")
@click.option("--calibration", type=click.Path(exists=True), default=None,
              help="Training images for --quantize: a dataset folder or a cache (.h5).")
@click.option("--calibration-n", type=click.IntRange(1), default=64, show_default=True,
              help="Calibration images drawn at random from --calibration.")
@click.option("--triton-repo", type=click.Path(file_okay=False), default=None,
              help="Classifiers: also write a Triton model repository here "
                   "(NAME/config.pbtxt, NAME/1/model.onnx, the preprocessing contract).")
@click.option("--triton-name", default=None,
              help="The model's name in --triton-repo [default: the .onnx file's stem].")
@click.option("--triton-max-batch", type=click.IntRange(1), default=16, show_default=True,
              help="max_batch_size of the Triton model (dynamic batching up to it).")
def export(checkpoint: str, out: str | None, tta: str, opset: int | None, dynamo: bool | None,
           probabilities: bool,
           size: int | None, no_verify: bool, quantize: str | None, calibration: str | None,
           calibration_n: int, triton_repo: str | None, triton_name: str | None,
           triton_max_batch: int) -> None:
    """Export a trained checkpoint (classifier or generator) or a run folder to ONNX.

    CHECKPOINT may be a run folder: a one-fold run exports its best_macro_f1.pt; an
    all-folds run (train --fold all) exports ONE model averaging every fold's
    probabilities, with the run's out-of-fold thresholds (RUN/thresholds.json).

    The checkpoint's kind picks the exporter. A classifier takes float images
    (B, C, S, S) in [0, 1] (normalisation is inside the graph) with a dynamic batch
    axis, and carries its classes, thresholds, stains, size and enhancement as
    metadata; a generator maps noise (B, 100) to images in [0, 1]. The file is checked
    with onnx.checker and compared with PyTorch at batch 1, 2 and 7 (rtol 1e-3,
    atol 1e-5) before it is written.

    \b
    Example:
      hpatk export run1/best_macro_f1.pt --out model.onnx
      hpatk export run1/best_macro_f1.pt --out int8.onnx --quantize int8 \\
          --calibration hpa-data
      hpatk export gans/class_00/generator.pt --out gen0.onnx --dynamo
      hpatk export run1/best_macro_f1.pt --out model.onnx --triton-repo triton-models
      hpatk export model.onnx --triton-repo triton-models    # package an exported model
      hpatk export run5 --out ensemble.onnx --tta flips     # all folds, one model
    """
    from pathlib import Path

    from hpatk.core.errors import HpatkError

    if checkpoint.endswith(".onnx"):
        if triton_repo is None:
            raise HpatkError(f"CHECKPOINT '{checkpoint}' is an ONNX model: it is already "
                             f"exported (pass --triton-repo DIR to package it for Triton)")
        if out is not None:
            raise HpatkError("--out: CHECKPOINT is already an .onnx model; with --triton-repo "
                             "only the Triton repository is written")
        _write_triton(checkpoint, triton_repo, triton_name, triton_max_batch)
        return
    if out is None:
        raise click.UsageError("Missing option '--out'.")
    if triton_repo is not None:  # a bad target fails before the export's work
        from hpatk.export.triton import triton_target

        triton_target(triton_repo, triton_name or Path(out).stem)
    from hpatk.export.onnx import export_checkpoint
    from hpatk.export.parity import ATOL, RTOL

    options = dict(opset=opset, exporter={None: "auto", True: "dynamo", False: "legacy"}[dynamo],
                   output="probabilities" if probabilities else "logits", size=size,
                   verify=not no_verify, quantize=quantize, calibration=calibration,
                   calibration_n=calibration_n)
    if not Path(checkpoint).exists():
        raise click.ClickException(f"'{checkpoint}' does not exist")
    if Path(checkpoint).is_dir() or tta != "none":
        from hpatk.export.ensemble import export_ensemble, export_run

        if Path(checkpoint).is_dir():
            res = export_run(checkpoint, out, tta=tta, **options)
        else:
            from hpatk.core.checkpoint import load_checkpoint

            res = export_ensemble([checkpoint], out, tta=tta,
                                  thresholds=load_checkpoint(checkpoint).get("thresholds"),
                                  **options)
    else:
        res = export_checkpoint(checkpoint, out, **options)
    mb = sum(f.stat().st_size for f in res.files) / 1e6
    for note in res.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"exported {res.kind}: {res.summary}")
    ens = res.metadata.get("ensemble")
    if ens and ens.get("oof"):
        oof = ens["oof"]
        click.echo(f"  folds {','.join(map(str, ens['folds']))}; out-of-fold thresholds "
                   f"({oof.get('images')} images: macro F1 {oof.get('macro_f1_at_0_5', 0):.4f} "
                   f"at 0.5, {oof.get('macro_f1_tuned', 0):.4f} tuned, over "
                   f"{oof.get('classes_present')} classes present)")
    click.echo(f"  {', '.join(str(f) for f in res.files)} ({mb:.1f} MB), {res.exporter} "
               f"exporter, opset {res.opset}, onnx.checker full check passed, "
               f"{res.seconds:.1f} s")
    if res.parity:
        batches = "/".join(str(b) for b in res.parity)
        click.echo(f"  parity vs PyTorch (ONNX Runtime CPU, batch {batches}): max abs error "
                   f"{res.max_abs_error:.2g} (rtol {RTOL:g}, atol {ATOL:g})")
        f64 = [p for p in res.parity.values() if "float64_onnx" in p]
        if f64:
            click.echo(f"  beyond rtol/atol, but float32 rounding: against float64, ONNX is off "
                       f"by {max(p['float64_onnx'] for p in f64):.2g} and PyTorch float32 by "
                       f"{max(p['float64_torch'] for p in f64):.2g} (an ill-conditioned model)")
    else:
        click.echo("  parity check skipped (--no-verify)")
    if res.quantization:
        q = res.quantization
        click.echo(f"  int8: {q['method']}, {q['calibration_images']} calibration images from "
                   f"{q['calibration_source']}; vs float on them: label agreement "
                   f"{q['label_agreement']:.4f}, max |dp| {q['max_abs_prob_diff']:.3g}")
    if triton_repo is not None:
        _write_triton(res.path, triton_repo, triton_name, triton_max_batch)


def _write_triton(model: object, repo: str, name: str | None, max_batch: int) -> None:
    from hpatk.export.triton import write_triton_repo

    res = write_triton_repo(str(model), repo, name=name, max_batch=max_batch)
    click.echo(f"Triton repository: {res.folder} (config.pbtxt, 1/model.onnx, labels.txt, "
               f"hpatk_metadata.json); serve it with tritonserver --model-repository "
               f"{res.folder.parent}")


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images_dir", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Kaggle submission CSV to write (Id,Predicted).")
@click.option("--ids", "ids_csv", type=click.Path(dir_okay=False), default=None,
              help="CSV whose Id column lists the images [default: the split's CSV in "
                   "IMAGES_DIR, or every *_green.png of the folder].")
@click.option("--split", type=click.Choice(["test", "train"]), default="test",
              show_default=True, help="Kaggle split of IMAGES_DIR to read.")
@click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
              help="ONNX Runtime execution provider (auto: CUDA when it loads, else CPU).")
@click.option("--strict", is_flag=True,
              help="Fail when the requested cuda/tensorrt provider does not load.")
@click.option("--batch", type=click.IntRange(1), default=16, show_default=True,
              help="Images per ONNX Runtime call.")
@click.option("--tta", type=click.Choice(TTA), default="none", show_default=True,
              help="Test-time augmentation: flips averages the 4 horizontal/vertical flips.")
@click.option("--probs", "probs_csv", type=click.Path(dir_okay=False), default=None,
              help="Also write per-class probabilities (Id, then one column per class index).")
@threads_option
@click.option("--workers", type=click.IntRange(1), default=2, show_default=True,
              help="Threads decoding and enhancing images.")
def predict(model: str, images_dir: str, out: str, ids_csv: str | None, split: str,
            provider: str, strict: bool, batch: int, tta: str, probs_csv: str | None,
            workers: int) -> None:
    """Predict with an exported ONNX classifier and write a Kaggle submission.

    Reads each image's stain PNGs, enhances and resizes them exactly as the training
    cache did (the enhancement recorded in the model), runs ONNX Runtime, applies the
    model's thresholds (at least one label per image) and writes `Id,Predicted`.
    Prints the execution providers that actually ran. Nothing is written on error.

    \b
    Example:
      hpatk predict model.onnx hpa-data --out submission.csv
      hpatk predict model.onnx hpa-data --out s.csv --provider cuda --strict --tta flips
    """
    from hpatk.export.predict import check_paths, predict_folder, select_samples, write_outputs
    from hpatk.export.runtime import OnnxClassifier

    check_paths(model, out, probs_csv)
    clf = OnnxClassifier(model, provider=provider, strict=strict)
    report = clf.report.describe().splitlines()
    click.echo(report[0])
    for line in report[1:]:
        click.echo(line, err=True)
    meta = clf.metadata
    enh = ", ".join(f"{k}={v}" for k, v in meta["enhance"].items() if k != "name")
    click.echo(f"model: {meta.get('backbone') or 'classifier'}, {len(clf.classes)} classes, "
               f"{'+'.join(clf.stains)} at {clf.size} px, {meta['enhance']['name']}"
               f"({enh}), {'tuned' if meta['thresholds'] else 'default 0.5'} thresholds"
               + (", int8" if meta.get("quantization") else "")
               + (f", ensemble of {meta['ensemble']['members']} models"
                  if meta.get("ensemble") else "")
               + (", flips TTA in the graph" if meta.get("tta") == "flips" else ""))
    samples = select_samples(images_dir, split=split, ids_csv=ids_csv, stains=clf.stains)
    start = time.monotonic()
    result = predict_folder(clf, samples, batch_size=batch, tta=tta, workers=workers)
    elapsed = time.monotonic() - start
    write_outputs(clf, result, out, probs_csv)
    n = len(result.ids)
    from hpatk.core.metrics import label_rate_warning

    expected = meta.get("labels_per_image")
    warning = label_rate_warning(sum(map(len, result.labels)) / max(n, 1),
                                 float(expected or 0), f" for {images_dir}")
    if warning:
        click.echo(warning, err=True)
    click.echo(f"predicted {n} images in {elapsed:.1f} s ({n / max(elapsed, 1e-9):.1f} images/s"
               f", tta {tta}); wrote {out}" + (f" and {probs_csv}" if probs_csv else ""))
