"""``hpatk serve``: an exported classifier behind an HTTP API and a web page."""

from __future__ import annotations

import click
from hpatk.cli.export import PROVIDERS
from hpatk.core.threads import threads_option

# The defaults live in hpatk.export.serve.ServeOptions; repeated here only for --help
# (importing it would pull numpy at `hpatk --help`); a test keeps them equal.
DEFAULTS = {"max_batch": 16, "max_wait_ms": 5.0, "max_request_mb": 64.0, "workers": 2}


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--provider", type=click.Choice(PROVIDERS), default="auto", show_default=True,
              help="ONNX Runtime execution provider (auto: CUDA when it loads, else CPU).")
@click.option("--strict", is_flag=True,
              help="Fail when the requested cuda/tensorrt provider does not load.")
@threads_option
@click.option("--max-batch", type=click.IntRange(1), default=DEFAULTS["max_batch"],
              show_default=True, help="Most images gathered into one ONNX Runtime call.")
@click.option("--max-wait-ms", type=click.FloatRange(0), default=DEFAULTS["max_wait_ms"],
              show_default=True,
              help="How long the first image of a batch waits for others to join.")
@click.option("--max-request-mb", type=click.FloatRange(0, min_open=True),
              default=DEFAULTS["max_request_mb"], show_default=True,
              help="Largest request body accepted (larger: HTTP 413).")
@click.option("--workers", type=click.IntRange(1), default=DEFAULTS["workers"],
              show_default=True, help="Threads decoding and enhancing uploaded images.")
@click.option("--log-level", type=click.Choice(["warning", "info", "debug"]), default="info",
              show_default=True, help="uvicorn's log level (debug adds an access log).")
def serve(model: str, host: str, port: int, provider: str, strict: bool, max_batch: int,
          max_wait_ms: float, max_request_mb: float, workers: int, log_level: str) -> None:
    """Serve an exported ONNX classifier over HTTP, with a web page at /.

    POST /v1/predict takes the stains as multipart files (fields green, red, blue,
    yellow: PNG/JPEG/TIFF, decoded, enhanced and resized exactly as `hpatk predict`
    does) or one .npy/.npz (C, H, W) array, and answers JSON: labels, class names,
    probabilities, thresholds, model fingerprint and timings. Concurrent requests are
    batched into one ONNX Runtime call (--max-batch, --max-wait-ms). Also GET /healthz,
    /readyz, /v1/metadata and /metrics (Prometheus). Needs `pip install 'hpatk[serve]'`.

    \b
    Example:
      hpatk serve demo-run/model.onnx --port 8000
      curl -F green=@x_green.png -F red=@x_red.png -F blue=@x_blue.png \\
           -F yellow=@x_yellow.png http://127.0.0.1:8000/v1/predict
    """
    import importlib.util

    from hpatk.core.errors import HpatkError

    missing = [m for m in ("fastapi", "uvicorn", "multipart", "prometheus_client")
               if importlib.util.find_spec(m) is None]
    if missing:
        raise HpatkError(f"hpatk serve needs the serve extra ({missing[0]} is not installed): "
                         f"pip install 'hpatk[serve]'")
    from hpatk.export.serve import ServeOptions
    from hpatk.export.serve import serve as run

    def started(clf: object, bound: int) -> None:
        report = clf.report.describe().splitlines()  # type: ignore[attr-defined]
        click.echo(report[0])
        for line in report[1:]:
            click.echo(line, err=True)
        where = f"[{host}]" if ":" in host else host
        click.echo(f"serving {model} on http://{where}:{bound}/ (max batch {max_batch}, "
                   f"max wait {max_wait_ms:g} ms, {workers} decode threads)")
        if host not in ("127.0.0.1", "localhost", "::1"):
            click.echo(f"note: --host {host} accepts other machines' requests; hpatk serve "
                       f"has no authentication (put it behind a proxy that has)", err=True)

    run(model, host=host, port=port, provider=provider, strict=strict,
        options=ServeOptions(max_batch=max_batch, max_wait_ms=max_wait_ms,
                             max_request_mb=max_request_mb, workers=workers),
        log_level=log_level, on_start=started)
