"""The served model under load, on loopback: its memory for large-image requests and its latency
for many small ones.

    python benchmarks/serving.py [--model models/model.keras] [--images DIR]
        [--requests 200] [--concurrency 4] [--huge-side 13000] [--huge-requests 2]
        [--large-side 6000]

Serves the served pyfunc with `mlflow models serve --env-manager local` on 127.0.0.1, exactly as
benchmarks/predict.py does (same model choice, same scratch MLflow store), then, in this order:

1. memory at rest: the resident set (VmRSS) and its peak so far (VmHWM) of the server's
   processes, read from /proc (Linux), after a warm-up request;
2. `--huge-requests` requests at once, each a blank 16-bit PNG of `--huge-side` squared
   (13000: 169 megapixels in a 0.3 MB file, the review's case; over
   preprocess.limits.max_pixels, so it is refused from its header) and the peak afterwards;
3. one blank 16-bit PNG of `--large-side` squared (6000: 36 megapixels, under the default
   40-megapixel limit, so it is decoded before the blank check refuses it): the peak memory of
   the largest decode the limits let through;
4. `--requests` one-image requests of a real X-ray, `--concurrency` at a time: p50 and p95
   latency and the throughput.

The peak is a high-water mark per process, so each figure includes the steps before it. Every
loop is bounded (a fixed number of requests, a timeout on each, a time limit on the start).
Run it on the code before a change (PYTHONPATH=<old tree>/src) for the before figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# benchmarks/predict.py sets the CPU-only environment before TensorFlow loads; reuse its server.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from predict import (
    choose_images,
    percentiles,
    post,
    prepare_model,
    register_served_model,
    serve,
    stop,
)

from helpers import blank_sixteen_bit_png


def process_group(leader: int) -> list[int]:
    """The pids of the server's process group (the CLI and the uvicorn it starts)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited while we looked
            continue
        if int(fields[2]) == leader:  # pgrp
            members.append(int(entry.name))
    return members


def memory_mb(leader: int) -> tuple[float, float]:
    """(current, peak) resident memory in MB of the largest process of the group: the uvicorn
    worker that holds the model."""
    current = peak = 0.0
    for pid in process_group(leader):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        values = {
            line.split(":")[0]: int(line.split()[1]) / 1024
            for line in status.splitlines()
            if line.startswith(("VmRSS:", "VmHWM:"))
        }
        current = max(current, values.get("VmRSS", 0.0))
        peak = max(peak, values.get("VmHWM", 0.0))
    return current, peak


def rows_of(answer: dict) -> list[dict]:
    return answer.get("predictions", answer)


def at_once(url: str, blobs: list[bytes]) -> list[tuple[float, list[dict]]]:
    """One single-image request per blob, all at once; (seconds, answer rows) each."""

    def one(blob: bytes) -> tuple[float, list[dict]]:
        started = time.perf_counter()
        rows = rows_of(post(f"{url}/invocations", [blob]))
        return time.perf_counter() - started, rows

    with ThreadPoolExecutor(max_workers=len(blobs)) as pool:
        return list(pool.map(one, blobs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a .keras file with its card and threshold")
    parser.add_argument("--images", type=Path, help="folder of X-rays for the latency requests")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--huge-side", type=int, default=13000)
    parser.add_argument("--huge-requests", type=int, default=2)
    parser.add_argument("--large-side", type=int, default=6000)
    arguments = parser.parse_args()
    if min(arguments.requests, arguments.concurrency, arguments.huge_requests) < 1:
        parser.error("--requests, --concurrency and --huge-requests must be >= 1")

    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        model_path, model_note = prepare_model(arguments.model, scratch)
        images, image_note = choose_images(arguments.images, 8, scratch)
        blobs = [path.read_bytes() for path in images]
        huge = blank_sixteen_bit_png(arguments.huge_side, arguments.huge_side)
        large = blank_sixteen_bit_png(arguments.large_side, arguments.large_side)
        tracking_uri = register_served_model(model_path, scratch / "mlruns")
        process, url, startup = serve(tracking_uri, scratch / "server.log")
        try:
            post(f"{url}/invocations", blobs[:1])  # warm-up
            rest = memory_mb(process.pid)
            huge_results = at_once(url, [huge] * arguments.huge_requests)
            after_huge = memory_mb(process.pid)
            large_results = at_once(url, [large])
            after_large = memory_mb(process.pid)

            latencies: list[float] = []
            errors = 0

            def one(index: int) -> None:
                nonlocal errors
                started = time.perf_counter()
                rows = rows_of(post(f"{url}/invocations", [blobs[index % len(blobs)]]))
                latencies.append(time.perf_counter() - started)
                errors += sum(row.get("error") is not None for row in rows)

            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=arguments.concurrency) as pool:
                list(pool.map(one, range(arguments.requests)))
            elapsed = time.perf_counter() - started
            after_load = memory_mb(process.pid)
        finally:
            stop(process)

    p50, p95 = percentiles(latencies)
    print(f"model: {model_note}; latency images: {image_note}; server start-up {startup:.1f} s")
    print(f"server memory at rest: RSS {rest[0]:.0f} MB, peak {rest[1]:.0f} MB")
    huge_seconds = max(seconds for seconds, _ in huge_results)
    print(
        f"{arguments.huge_requests} x {arguments.huge_side}x{arguments.huge_side} 16-bit PNG "
        f"({len(huge) / 1e6:.2f} MB) at once: peak {after_huge[1]:.0f} MB, slowest "
        f"{huge_seconds * 1000:.0f} ms; answer: {huge_results[0][1][0].get('error')}"
    )
    print(
        f"1 x {arguments.large_side}x{arguments.large_side} 16-bit PNG ({len(large) / 1e6:.2f} MB):"
        f" peak {after_large[1]:.0f} MB, {large_results[0][0] * 1000:.0f} ms; answer: "
        f"{large_results[0][1][0].get('error')}"
    )
    print(
        f"{arguments.requests} one-image requests at concurrency {arguments.concurrency}: "
        f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, {arguments.requests / elapsed:.1f} requests/s, "
        f"{errors} error rows; peak {after_load[1]:.0f} MB"
    )


if __name__ == "__main__":
    main()
