"""Load test of ``hpatk serve``: a bounded number of requests from 1, 8 and 32 concurrent
clients against a live server on 127.0.0.1 (nowhere else), stopping by itself, against
``hpatk predict`` on the same images in the same run.

A classifier (``--backbone`` at ``--model-size`` px, BatchNorm statistics from data as in
bench_onnx.py) is exported; a synthetic folder of ``--images`` 4-stain PNGs of
``--image-size`` px is written; ``hpatk predict`` runs over it once (its images/s is the
baseline); then ``hpatk serve`` starts on a free port and each client level sends
``--requests`` requests (the stains of the images in turn, as multipart PNGs, bodies
encoded once up front so the clients cost little CPU). Every request has a timeout, and
the whole level stops after ``--max-seconds``.

    python tests/benchmarks/bench_serve.py                       # 2,000 requests a level
    python tests/benchmarks/bench_serve.py --requests 200 --clients 1,8,32

Prints one JSON object: per level throughput (images/s), latency p50/p95/p99 (ms), errors
(must be 0), mean ONNX Runtime batch size; the server's RSS before and after all levels;
``ratio`` = served images/s at the largest client count / ``hpatk predict`` images/s
(goal >= 0.8). The load generator shares the machine with the server: on a 2-core box it
takes CPU from it, so the ratio is a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

GOAL = 0.8
STAINS = ("green", "red", "blue", "yellow")
HPATK = [sys.executable, "-c", "from hpatk.cli.main import main; main()"]


def make_model(work: Path, backbone: str, size: int) -> Path:
    """An exported classifier with realistic activations (see bench_onnx.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_onnx import realistic_checkpoint
    from hpatk.export import export_checkpoint

    ck = work / "model.pt"
    realistic_checkpoint(backbone, size, ck)
    return export_checkpoint(ck, work / "model.onnx").path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def encoded_bodies(folder: Path, ids: list[str]) -> list[tuple[bytes, dict[str, str]]]:
    """One multipart body (and its headers) per image, encoded once by httpx."""
    import httpx

    out = []
    for i in ids:
        files = {s: (f"{i}_{s}.png", (folder / "test" / f"{i}_{s}.png").read_bytes(),
                     "image/png") for s in STAINS}
        req = httpx.Request("POST", "http://127.0.0.1/v1/predict", files=files)
        body = req.read()
        out.append((body, {"content-type": req.headers["content-type"]}))
    return out


async def load(url: str, bodies: list[tuple[bytes, dict[str, str]]], clients: int,
               requests: int, max_seconds: float) -> dict[str, Any]:
    """``requests`` POSTs from ``clients`` concurrent clients; stops at ``max_seconds``."""
    import httpx

    latencies: list[float] = []
    batches: list[int] = []
    errors: dict[str, int] = {}
    sent = 0
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests and time.monotonic() < deadline:
            body, headers = bodies[sent % len(bodies)]
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await http.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            if r.status_code != 200:
                errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                continue
            latencies.append(time.perf_counter() - t0)
            batches.append(int(r.json()["batch_size"]))

    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - t0
    lat = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return {"clients": clients, "requests": sent, "ok": len(latencies),
            "errors": sum(errors.values()), "errors_by_kind": errors,
            "seconds": round(seconds, 2),
            "images_per_s": round(len(latencies) / seconds, 2),
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "mean_batch": round(float(np.mean(batches)), 2) if batches else None,
            "stopped_by_time": time.monotonic() >= deadline}


def predict_rate(model: Path, folder: Path, work: Path, batch: int) -> tuple[float, str]:
    """``hpatk predict`` images/s over the folder (its own printed figure), and its output."""
    r = subprocess.run([*HPATK, "predict", str(model), str(folder), "--out",
                        str(work / "sub.csv"), "--provider", "cpu", "--batch", str(batch)],
                       capture_output=True, text=True, timeout=3600)
    if r.returncode:
        raise SystemExit(f"hpatk predict failed: {r.stderr or r.stdout}")
    m = re.search(r"\(([\d.]+) images/s", r.stdout)
    if not m:
        raise SystemExit(f"hpatk predict printed no images/s: {r.stdout}")
    return float(m.group(1)), r.stdout.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests per client level")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--images", type=int, default=64, help="distinct images (cycled)")
    ap.add_argument("--image-size", type=int, default=512)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--model-size", type=int, default=128)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--workers", type=int, default=2, help="server decode threads")
    ap.add_argument("--max-seconds", type=float, default=600, help="per client level")
    ap.add_argument("--keep", type=Path, default=None, help="keep the model and images here")
    args = ap.parse_args(argv)

    import httpx
    import psutil
    from hpatk.core.synth import make_synthetic

    work = Path(args.keep or tempfile.mkdtemp(prefix="bench_serve."))
    work.mkdir(parents=True, exist_ok=True)
    model = make_model(work, args.backbone, args.model_size)
    folder = work / "data"
    if not folder.exists():
        make_synthetic(folder, n=1, size=args.image_size, seed=0, n_test=args.images,
                       workers=1)
    with open(folder / "sample_submission.csv", newline="") as f:
        ids = [r["Id"] for r in csv.DictReader(f)]
    predict_ips, predict_line = predict_rate(model, folder, work, args.max_batch)
    print(json.dumps({"hpatk_predict_images_per_s": predict_ips}), file=sys.stderr, flush=True)
    bodies = encoded_bodies(folder, ids)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work / "serve.log", "wb")  # noqa: SIM115 -- closed in finally
    server = subprocess.Popen([*HPATK, "serve", str(model), "--host", "127.0.0.1", "--port",
                               str(port), "--provider", "cpu", "--max-batch",
                               str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
                               "--workers", str(args.workers), "--log-level", "warning"],
                              stdout=log, stderr=subprocess.STDOUT)
    levels = []
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                raise SystemExit(f"hpatk serve exited: {(work / 'serve.log').read_text()}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("hpatk serve was not ready after 120 s")
            time.sleep(0.25)
        proc = psutil.Process(server.pid)
        asyncio.run(load(url + "/v1/predict", bodies, 4, 16, 120))  # warm-up
        rss_before = proc.memory_info().rss
        for clients in [int(c) for c in args.clients.split(",")]:
            res = asyncio.run(load(url + "/v1/predict", bodies, clients, args.requests,
                                   args.max_seconds))
            res["rss_mb"] = round(proc.memory_info().rss / 2**20, 1)
            levels.append(res)
            print(json.dumps(res), file=sys.stderr, flush=True)
        rss_after = proc.memory_info().rss
        metrics = httpx.get(url + "/metrics", timeout=10).text
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    top = max(levels, key=lambda r: r["clients"])
    batch_calls = re.search(r"^hpatk_batch_size_count ([\d.e+]+)$", metrics, re.M)
    out = {
        "benchmark": "hpatk serve under concurrent load vs hpatk predict (same images, run)",
        "ratio": round(top["images_per_s"] / predict_ips, 3),
        "ratio_config": f"{top['clients']} clients vs hpatk predict --batch {args.max_batch}",
        "goal": GOAL, "goal_met": top["images_per_s"] / predict_ips >= GOAL,
        "errors": sum(r["errors"] for r in levels),
        "hpatk_predict_images_per_s": predict_ips, "hpatk_predict": predict_line,
        "levels": levels,
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_after_mb": round(rss_after / 2**20, 1),
        "rss_growth_mb": round((rss_after - rss_before) / 2**20, 1),
        "onnx_runtime_calls": float(batch_calls.group(1)) if batch_calls else None,
        "model": f"{args.backbone} at {args.model_size} px", "images": len(ids),
        "image_size": args.image_size, "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms, "server_workers": args.workers,
        "cpus": len(os.sched_getaffinity(0)),
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
