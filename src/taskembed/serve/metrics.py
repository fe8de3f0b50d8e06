"""Prometheus metrics for one server instance (own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 8192, 16384, 32768, 65536, 131072)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("taskembed_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("taskembed_request_seconds", "HTTP request latency", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.inputs = Counter("taskembed_inputs", "Texts (or late-chunking chunks) embedded", registry=r)
        self.tokens = Counter("taskembed_tokens", "Tokens embedded (prefix and special tokens included)",
                              registry=r)
        self.batch_rows = Histogram("taskembed_batch_rows", "Rows per forward pass", buckets=SIZE_BUCKETS,
                                    registry=r)
        self.batch_tokens = Histogram("taskembed_batch_tokens", "Tokens per forward pass (padding included)",
                                      buckets=TOKEN_BUCKETS, registry=r)
        self.batch_requests = Histogram("taskembed_batch_requests", "Requests served by one batcher step",
                                        buckets=SIZE_BUCKETS, registry=r)
        self.queue_seconds = Histogram("taskembed_queue_seconds", "Time a request waited in the queue",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram("taskembed_inference_seconds", "Time of one batcher step on the worker",
                                           buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("taskembed_queue_inputs", "Inputs waiting in the queue", registry=r)
        self.queue_tokens = Gauge("taskembed_queue_tokens", "Tokens waiting in the queue (not yet in a pass)",
                                  registry=r)
        self.rejected = Counter("taskembed_rejected", "Requests refused because the queue was full", registry=r)
        self.cancelled = Counter("taskembed_cancelled", "Requests dropped because the client went away",
                                 registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
