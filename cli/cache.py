"""``hpatk cache``: the HDF5 dataset cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from hpatk.core.cache_file import DEFAULT_ENHANCE, DEFAULT_SIZE  # light: no torch at --help
from hpatk.core.classes import STAINS
from hpatk.core.threads import threads_option


@click.group()
def cache() -> None:
    """Build and inspect the HDF5 cache of decoded, enhanced, resized images.

    \b
    Example:
      hpatk cache build demo-data --out cache.h5 --enhance clahe --size 256
      hpatk cache info cache.h5
    """


def _value(text: str) -> Any:
    """``2`` -> 2, ``2.5`` -> 2.5, ``8,8`` -> [8, 8], ``true`` -> True, else the string."""
    import yaml

    if "," in text and not text.strip().startswith("["):
        return [_value(part) for part in text.split(",")]
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def enhance_params(clip_limit: float | None, grid_size: str | None,
                   pairs: tuple[str, ...]) -> dict[str, Any]:
    """Enhancer keyword arguments from ``--clip-limit``, ``--grid-size`` and
    ``--enhance-param key=value`` options."""
    params: dict[str, Any] = {}
    if clip_limit is not None:
        params["clip_limit"] = clip_limit
    if grid_size is not None:
        g = _value(grid_size)
        params["grid_size"] = [g, g] if isinstance(g, int) else g
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"'{pair}' is not KEY=VALUE", param_hint="--enhance-param")
        params[key.strip().replace("-", "_")] = _value(value.strip())
    return params


@cache.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Cache file. Default: DATA_DIR.<enhance>-<size>px-<digest>.h5 beside "
                   "DATA_DIR, the file 'hpatk train --data DATA_DIR' looks for.")
@click.option("--enhance", default=DEFAULT_ENHANCE, show_default=True,
              help="Enhancer name (see 'hpatk registry enhancers'); 'none' for raw images.")
@click.option("--clip-limit", type=float, default=None,
              help="CLAHE clip limit (enhancer parameter clip_limit).")
@click.option("--grid-size", default=None, help="CLAHE tiles, '8' or '8,8' (grid_size).")
@click.option("--enhance-param", "-p", "pairs", multiple=True, metavar="KEY=VALUE",
              help="Any enhancer parameter; repeat for several.")
@click.option("--size", type=click.IntRange(min=1), default=DEFAULT_SIZE, show_default=True,
              help="Output side in pixels (resized after enhancement, INTER_AREA).")
@click.option("--stains", default=",".join(STAINS), show_default=True,
              help="Channels, in order.")
@click.option("--extra", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="HPAv18 folder appended after the Kaggle images; repeat for several.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decoding processes (default: all usable CPUs; 0 or 1: in this process).")
@click.option("--compression", type=click.Choice(["none", "blosc-lz4"]), default=None,
              help="'none' (default, fastest reads) or 'blosc-lz4' (smaller, ~0.7x speed).")
@click.option("--force", is_flag=True, help="Rebuild even if the cache is up to date.")
@threads_option
def build(data_dir: Path, out: Path | None, enhance: str, clip_limit: float | None,
          grid_size: str | None, pairs: tuple[str, ...], size: int, stains: str,
          extra: tuple[Path, ...], workers: int | None, compression: str | None,
          force: bool) -> None:
    """Decode, enhance and resize DATA_DIR's training images once, into one HDF5 file.

    Reuses the cache when its fingerprint (input files with sizes and mtimes, labels,
    enhancement and its parameters, size, stains) matches, and says so; rebuilds it
    otherwise. The file appears only when complete; a killed build leaves nothing.

    \b
    Example:
      hpatk cache build demo-data --out cache.h5 --enhance clahe --clip-limit 2 --size 256
      hpatk cache build kaggle --extra hpav18 --workers 8 --out full-512.h5
    """
    from hpatk.core.cache import build_cache, default_cache_path, read_cache_meta

    params = enhance_params(clip_limit, grid_size, pairs)
    if out is None:
        out = default_cache_path(data_dir, enhance=enhance, enhance_params=params, size=size,
                                 stains=stains, extra=extra)
    path = build_cache(data_dir, out, enhance=enhance, enhance_params=params, size=size,
                       stains=stains, extra=extra, workers=workers, force=force,
                       compression=compression)
    meta = read_cache_meta(path)
    shape = " x ".join(str(s) for s in meta["shape"])
    click.echo(f"{path}: {shape} uint8, {_describe(meta['enhance'])}, "
               f"{_human(path.stat().st_size)}")


@cache.command()
@click.argument("cache_file", metavar="CACHE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
def info(cache_file: Path, as_json: bool) -> None:
    """Show a cache: shape, compression, fingerprint, class counts, synthetic batches.

    \b
    Example:
      hpatk cache info cache.h5
      hpatk cache info cache.h5 --json
    """
    from hpatk.core.cache import cache_labels, read_cache_meta
    from hpatk.core.classes import CLASS_NAMES

    meta = read_cache_meta(cache_file)
    counts = cache_labels(cache_file).sum(axis=0).astype(int).tolist()
    disk = cache_file.stat().st_size
    if as_json:
        click.echo(json.dumps({**meta, "class_counts": counts, "size_on_disk": disk},
                              indent=2, default=list))
        return
    n, c, h, w = meta["shape"]
    chunks = " x ".join(str(s) for s in meta["chunks"]) if meta["chunks"] else "contiguous"
    rows = [
        ("file", f"{cache_file} ({_human(disk)} on disk)"),
        ("images", f"{n} x {c} x {h} x {w} {meta['dtype']}, chunks {chunks}, "
                   f"compression {meta['compression']}"),
        ("stains", ",".join(meta["stains"])),
        ("enhance", _describe(meta["enhance"])),
        ("size", f"{meta['size']} px"),
        ("sources", ", ".join(f"{k} {v}" for k, v in meta["sources"].items())),
        ("fingerprint", meta["fingerprint"]),
        ("built", f"{meta['created']} in {meta['build_seconds']:.0f}s by hpatk "
                  f"{meta['hpatk_version']}, OpenCV {meta['opencv_version']}, format "
                  f"{meta['format_version']}"),
    ]
    rows += [("input", f"{i['root']} ({i['source']}, {i['images']} images)")
             for i in meta["inputs"]]
    for key, value in rows:
        click.echo(f"{key:<12} {value}")
    click.echo(f"{'classes':<12} {'images':>7} {'share':>7}")
    for k, count in enumerate(counts):
        click.echo(f"  {k:>2} {CLASS_NAMES[k]:<31} {count:>7} {100 * count / max(n, 1):>6.1f}%")
    from hpatk.core.folds import fold_label

    syn = meta["synthetic"]
    click.echo(f"{'synthetic':<12} {len(syn)} batches, {sum(b['n'] for b in syn)} images")
    for b in syn:
        fold = fold_label(b["fold"])
        click.echo(f"  {b['batch']}  class {b['class_index']} {b['class_name']}  n={b['n']}  "
                   f"generator={b['generator']}  trained on {fold}  seed={b['seed']}  "
                   f"{b['created']}")


def _describe(cfg: dict[str, Any]) -> str:
    params = " ".join(f"{k}={v}" for k, v in cfg.items() if k != "name")
    return f"{cfg.get('name')} {params}".strip()


def _human(nbytes: int) -> str:
    size = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover
