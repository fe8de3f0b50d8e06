"""Load test of `taskembed serve` on 127.0.0.1 against calling Embedder.encode in one process.

    python -m benchmarks.serve_load [--model DIR | --size tiny|deep|small] [--requests 384] [--concurrency 1 8 64]

For each concurrency level, N requests (one text each, sentences of mixed length) go to a server started
as a subprocess, over that many keep-alive connections (a minimal asyncio client). Two servers run side by
side: dynamic batching on (the defaults) and off (a one-token budget and no wait, so every request is its
own forward pass); the request list is sent in slices of max(64, 2 x concurrency), alternating between
the two, so drifting load on a shared machine hits both alike; a slice stops at --time-cap / 4 seconds.
The direct baselines, in this process: encode() once per text, one after the other (what a program
without a server does), and encode() of all texts in one call (the batching ceiling). Reported:
throughput, p50/p99 latency, mean rows per forward pass. Without --model a random model is made and saved
to a temporary directory (tiny: 2 layers x 64 wide, deep: 12 x 64, small: 4 x 256).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import torch

import taskembed
from tests.support.tiny import SAMPLE_TEXTS, make_tiny_embedder

SIZES = {
    "tiny": {},
    # Narrow but deep: a forward pass costs about the same for 1 row as for 30, as on a GPU.
    "deep": dict(num_hidden_layers=12),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                  matryoshka_dimensions=[32, 64, 128, 256]),
}


def texts(n: int) -> list[str]:
    # One to three sample sentences: lengths vary the way real traffic does.
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(SAMPLE_TEXTS[:18], size=int(rng.integers(1, 4)))) for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, extra: list[str], threads: int, timeout_s: float = 120) -> subprocess.Popen:
    """`taskembed serve` in a subprocess on 127.0.0.1:port, returned once /health answers (serve_soak.py too)."""
    cmd = [sys.executable, "-m", "taskembed.cli", "serve", "--model", str(model), "--port", str(port),
           "--log-level", "warning", "--threads", str(threads), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"server did not start in {timeout_s:.0f} s")


def forward_rows(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics").text
    total = float(re.search(r"^taskembed_batch_rows_sum (\S+)", text, re.M).group(1))
    count = float(re.search(r"^taskembed_batch_rows_count (\S+)", text, re.M).group(1))
    return total, count


async def _post(reader, writer, path: str, body: bytes) -> bytes:
    """One HTTP/1.1 keep-alive request on an open connection; the server's answer body."""
    writer.write(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    data = await reader.readexactly(length)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {data[:200]!r}")
    return data


async def load(port: int, items: list[str], concurrency: int, task: str, time_cap: float) -> tuple[list[float], float]:
    # A minimal raw-socket client: httpx's pool costs more CPU per request than the server at high
    # concurrency, and on a small machine the client would then be what is measured.
    latencies: list[float] = []
    queue = list(reversed(items))
    stop = time.perf_counter() + time_cap

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while queue and time.perf_counter() < stop:
                body = json.dumps({"input": [queue.pop()], "task": task}).encode()
                t = time.perf_counter()
                await _post(reader, writer, "/v1/embeddings", body)
                latencies.append(time.perf_counter() - t)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


def row(mode: str, conc: str, lat: list[float], wall: float, rows: str = "") -> str:
    ms = np.array(lat) * 1000
    return (f"| {mode} | {conc} | {len(lat)} | {len(lat) / wall:.0f} | {np.percentile(ms, 50):.1f} | "
            f"{np.percentile(ms, 99):.1f} | {rows} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model directory (default: a random model of --size)")
    p.add_argument("--size", choices=list(SIZES), default="small")
    p.add_argument("--requests", type=int, default=384, help="requests per concurrency level")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--time-cap", type=float, default=20.0, help="seconds per level at most")
    p.add_argument("--task", default="retrieval.passage")
    p.add_argument("--threads", type=int, default=1, help="torch threads, here and in the server")
    p.add_argument("--no-unbatched", action="store_true", help="skip the batching-off server")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="no task given")

    tmp = None
    if args.model:
        model = Path(args.model)
        emb = taskembed.load(model)
    else:
        tmp = tempfile.TemporaryDirectory()
        model = Path(tmp.name) / args.size
        make_tiny_embedder(seed=0, **SIZES[args.size]).save(model)
        emb = taskembed.load(model)
    items = texts(args.requests)
    print(f"model: {args.model or args.size + ' (random)'}; {args.requests} requests of 1 text per level; "
          f"torch threads {args.threads}; cpu count {os.cpu_count()}\n")
    print("| mode | concurrency | requests | req/s | p50 ms | p99 ms | rows per forward |")
    print("|---|---|---|---|---|---|---|")

    emb.encode(items[:8], task=args.task)  # warm-up
    lat, start = [], time.perf_counter()
    for t in items:
        if time.perf_counter() - start > args.time_cap:
            break
        s = time.perf_counter()
        emb.encode([t], task=args.task)
        lat.append(time.perf_counter() - s)
    print(row("encode() per text, in process", "1", lat, time.perf_counter() - start, "1"))
    s = time.perf_counter()
    emb.encode(items, task=args.task)
    wall = time.perf_counter() - s
    print(f"| encode() all texts in one call, in process | - | {len(items)} | {len(items) / wall:.0f} | - | - | "
          f"up to 32 |")

    configs = [("server, dynamic batching", [])]
    if not args.no_unbatched:
        configs.append(("server, batching off", ["--max-batch-tokens", "1", "--max-wait-ms", "0"]))
    # Both servers up at once (idle costs nothing) and levels interleaved, so drift in a shared machine's
    # load hits both modes alike.
    servers = []
    try:
        for mode, extra in configs:
            port = free_port()
            servers.append((mode, port, start_server(model, port, ["--max-inputs", "2048", *extra], args.threads)))
            asyncio.run(load(port, items[:16], 4, args.task, args.time_cap))  # warm-up
        lines = {mode: [] for mode, _ in configs}
        for c in args.concurrency:
            # Modes alternate in slices of the request list, so both see the same mix of machine load.
            size = max(64, 2 * c)
            stats = {mode: ([], 0.0, forward_rows(f"http://127.0.0.1:{port}")) for mode, port, _ in servers}
            for lo in range(0, len(items), size):
                for mode, port, _ in servers:
                    lat, wall = asyncio.run(load(port, items[lo : lo + size], c, args.task, args.time_cap / 4))
                    stats[mode][0].extend(lat)
                    stats[mode] = (stats[mode][0], stats[mode][1] + wall, stats[mode][2])
            for mode, port, _ in servers:
                lat, wall, before = stats[mode]
                after = forward_rows(f"http://127.0.0.1:{port}")
                rows = (after[0] - before[0]) / max(after[1] - before[1], 1)
                lines[mode].append(row(mode, str(c), lat, wall, f"{rows:.1f}"))
        for mode in lines:
            print("\n".join(lines[mode]))
    finally:
        for _, _, proc in servers:
            proc.terminate()
            proc.wait(30)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
