"""Soak test of `taskembed serve`: many concurrent clients, mixed good and bad traffic, bounded time.

    python -m benchmarks.serve_soak [--model DIR | --size tiny|small] [--clients 64] [--seconds 60]

A server subprocess on 127.0.0.1 gets --clients concurrent clients for --seconds. The clients connect
first, then start together and loop over a mix: short requests (one sentence), long ones (a full-length
text, truncated), oversized ones (a text over the character bound, and a request over
--max-request-tokens), malformed ones (bad JSON, a lone surrogate, wrong content type, no key) and
disconnects (a long request abandoned after a moment).
Clients wait as long as a 503's Retry-After says (at most 5 s). Printed: requests by kind and status, the
count of 5xx other than 503 backpressure (target 0), p50/p99 latency of short and of long
requests alone, the time of one full forward pass (a max-length text alone, measured before the load, and
again after it for comparison), and the server's RSS before, at its peak and after the queue drained and
sat idle (targets: RSS after within 10% of before, short p99 under 2x one full pass). To tell the server's
scheduling from the machine it shares, it also prints the server's passes (from /metrics: count, mean time,
tokens embedded per second) and where the CPU time went during the load: server, this client process, and
everything else on the machine. The clients run in this process, apart from the server's.
Without --model a random model is made and saved to a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from benchmarks.serve_load import start_server
from tests.support.tiny import SAMPLE_TEXTS, make_tiny_embedder

KEY = "soak-key"
GRACE_S = 20.0
IDLE_S = 3.0  # longer than the server's idle wait before it returns freed memory
AUTH = {"Authorization": f"Bearer {KEY}"}
SIZES = {"tiny": {}, "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                   intermediate_size=1024, matryoshka_dimensions=[32, 64, 128, 256])}
KINDS = ["short"] * 10 + ["long"] * 3 + ["oversized", "too_many_tokens", "bad_json", "surrogate", "content_type",
                                         "no_key", "disconnect"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(kind: str, rng: random.Random, limits: dict) -> tuple[bytes, dict[str, str]]:
    short = rng.choice(SAMPLE_TEXTS)
    long = " ".join(rng.sample(SAMPLE_TEXTS, len(SAMPLE_TEXTS))) * 40  # well over the token limit: truncated
    headers = {**AUTH, "content-type": "application/json"}
    if kind == "short":
        return json.dumps({"input": short, "task": "retrieval.query"}).encode(), headers
    if kind in ("long", "disconnect"):
        return json.dumps({"input": long, "task": "retrieval.passage", "truncate": True}).encode(), headers
    if kind == "oversized":
        return json.dumps({"input": "word " * (limits["max_tokens"] * 20)}).encode(), headers
    if kind == "too_many_tokens":
        n = limits["max_request_tokens"] // limits["max_tokens"] + 2
        return json.dumps({"input": [long] * n, "truncate": True}).encode(), headers
    if kind == "bad_json":
        return b'{"input": ["unterminated', headers
    if kind == "surrogate":
        return b'{"input": "abc \\ud800 def"}', headers
    if kind == "content_type":
        return json.dumps({"input": short}).encode(), {**AUTH, "content-type": "text/plain"}
    return json.dumps({"input": short}).encode(), {"content-type": "application/json"}  # no_key


async def client(url: str, go: asyncio.Future, seed: int, limits: dict, out: list, ready: list) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        # Connect first and start together: 64 connections opening at once would otherwise put a second
        # of connection setup into each client's first (timed) request.
        (await c.get("/health")).raise_for_status()
        ready.append(seed)
        stop = await go
        while time.monotonic() < stop:
            kind = rng.choice(KINDS)
            body, headers = request(kind, rng, limits)
            t0 = time.perf_counter()
            if kind == "disconnect":
                task = asyncio.create_task(c.post("/v1/embeddings", content=body, headers=headers))
                await asyncio.sleep(rng.uniform(0.01, 0.3))
                task.cancel()
                try:
                    await task
                    out.append((kind, task.result().status_code, time.perf_counter() - t0))
                except (asyncio.CancelledError, httpx.HTTPError):
                    out.append((kind, 0, time.perf_counter() - t0))
                continue
            try:
                # Requests still running GRACE_S after the end are abandoned (a disconnect, counted apart).
                left = max(1.0, stop + GRACE_S - time.monotonic())
                r = await asyncio.wait_for(c.post("/v1/embeddings", content=body, headers=headers), left)
                status = r.status_code
                if status >= 500 and status != 503:
                    print(f"{status} on {kind}: {r.text[:200]}", file=sys.stderr)
            except TimeoutError:
                out.append((kind, -2, time.perf_counter() - t0))
                continue
            except httpx.HTTPError as e:
                status = -1
                print(f"transport error on {kind}: {type(e).__name__}", file=sys.stderr)
            out.append((kind, status, time.perf_counter() - t0))
            if status == 503:  # backpressure: a well-behaved client waits as told (capped, for a bounded run)
                await asyncio.sleep(min(5.0, float(r.headers.get("retry-after", 1))))


async def sample_rss(proc: psutil.Process, stop: asyncio.Event, peak: list) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        await asyncio.sleep(0.2)


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def machine_busy_seconds() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)


async def soak(url: str, pid: int, clients: int, seconds: float, limits: dict) -> tuple[list, int, dict]:
    out: list = []
    proc, me = psutil.Process(pid), psutil.Process()
    peak, stop_rss = [proc.memory_info().rss], asyncio.Event()
    sampler = asyncio.create_task(sample_rss(proc, stop_rss, peak))
    go, ready = asyncio.get_running_loop().create_future(), []
    tasks = [asyncio.create_task(client(url, go, i, limits, out, ready)) for i in range(clients)]
    while len(ready) < clients:
        await asyncio.sleep(0.05)
    cpu0, wall0 = (cpu_seconds(proc), cpu_seconds(me), machine_busy_seconds()), time.perf_counter()
    go.set_result(time.monotonic() + seconds)
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - wall0
    cpu1 = (cpu_seconds(proc), cpu_seconds(me), machine_busy_seconds())
    server, mine, busy = (b - a for a, b in zip(cpu0, cpu1, strict=True))
    stop_rss.set()
    await sampler
    cpu = {"wall": wall, "server": server / wall, "client": mine / wall, "other": (busy - server - mine) / wall}
    return out, peak[0], cpu


def metric(text: str, name: str) -> float:
    """One unlabelled sample from Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def drained(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and httpx.get(f"{url}/health", timeout=5).json()["queued_inputs"] > 0:
        time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model directory (default: a random model of --size)")
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the server")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else Path(tmp) / "model"
        if not args.model:
            make_tiny_embedder(seed=0, **SIZES[args.size]).save(model)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(model, port, ["--api-key", KEY], args.threads, timeout_s=180)
        try:
            card = httpx.get(f"{url}/v1/models", headers=AUTH).json()["data"][0]
            limits = {"max_tokens": card["max_tokens"], "max_request_tokens": card["max_request_tokens"]}
            full = " ".join(SAMPLE_TEXTS) * 200
            body = {"input": full, "truncate": True, "task": "retrieval.passage"}

            def full_pass() -> float:
                times = []
                for _ in range(4):  # one full-length forward pass, alone (first call warms up)
                    t0 = time.perf_counter()
                    httpx.post(f"{url}/v1/embeddings", json=body, headers=AUTH, timeout=300).raise_for_status()
                    times.append(time.perf_counter() - t0)
                return float(np.median(times[1:]))

            one_pass = full_pass()
            pid = server.pid
            time.sleep(IDLE_S)
            rss_before = psutil.Process(pid).memory_info().rss
            m0 = httpx.get(f"{url}/metrics", headers=AUTH).text
            out, rss_peak, cpu = asyncio.run(soak(url, pid, args.clients, args.seconds, limits))
            m1 = httpx.get(f"{url}/metrics", headers=AUTH).text
            drained(url)  # abandoned requests are dropped at their next pass boundary
            time.sleep(IDLE_S)  # the server gives memory back after a moment of idle
            rss_after = psutil.Process(pid).memory_info().rss
            one_pass_after = full_pass()
        finally:
            server.terminate()
            server.wait(60)

    print(f"model: {args.model or args.size}, clients: {args.clients}, seconds: {args.seconds:g}, "
          f"max_tokens: {limits['max_tokens']}, one full pass alone: {one_pass * 1000:.0f} ms "
          f"(after the load: {one_pass_after * 1000:.0f} ms)")
    passes = metric(m1, "taskembed_inference_seconds_count") - metric(m0, "taskembed_inference_seconds_count")
    pass_s = metric(m1, "taskembed_inference_seconds_sum") - metric(m0, "taskembed_inference_seconds_sum")
    tokens = metric(m1, "taskembed_tokens_total") - metric(m0, "taskembed_tokens_total")
    print(f"server: {passes:.0f} passes, mean {pass_s / max(passes, 1) * 1000:.0f} ms, busy {pass_s / cpu['wall']:.0%} "
          f"of the load's {cpu['wall']:.1f} s; {tokens / cpu['wall']:.0f} tokens/s answered")
    print(f"CPU during the load (cores of {psutil.cpu_count()}): server {cpu['server']:.2f}, "
          f"clients {cpu['client']:.2f}, rest of the machine {cpu['other']:.2f}; load average {os.getloadavg()[0]:.2f}")
    print(f"requests: {len(out)}")
    by: dict[tuple[str, int], int] = {}
    for kind, status, _ in out:
        by[(kind, status)] = by.get((kind, status), 0) + 1
    for (kind, status), n in sorted(by.items()):
        print(f"  {kind:16s} {status:4d}  x{n}")
    fives = sum(n for (_, status), n in by.items() if (status >= 500 and status != 503) or status == -1)
    busy = sum(n for (_, status), n in by.items() if status == 503)
    print(f"5xx other than 503, or transport errors: {fives} (target 0); 503 backpressure: {busy}; "
          f"unfinished {GRACE_S:g} s after the end (-2): {sum(n for (_, st), n in by.items() if st == -2)}")
    for kind in ("short", "long"):
        lat = np.array([t for k, s, t in out if k == kind and s == 200]) * 1000
        if len(lat):
            print(f"{kind:5s} ok: {len(lat):5d}  p50 {np.percentile(lat, 50):8.0f} ms  p99 "
                  f"{np.percentile(lat, 99):8.0f} ms")
    short = np.array([t for k, s, t in out if k == "short" and s == 200])
    if len(short):
        print(f"short p99 / one full pass: {np.percentile(short, 99) / one_pass:.2f} (target < 2)")
    mib = 1024 * 1024
    print(f"RSS before {rss_before / mib:.0f} MiB, peak {rss_peak / mib:.0f} MiB, after {rss_after / mib:.0f} MiB "
          f"({(rss_after / rss_before - 1) * 100:+.1f}%, target within 10%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
