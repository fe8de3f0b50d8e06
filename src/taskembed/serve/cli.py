"""`taskembed serve`: load one model and serve it over HTTP with uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from .. import checkpoint
from .app import ServerSettings, create_app

API_KEY_ENV = "TASKEMBED_API_KEY"  # comma-separated for several keys


def build_parser() -> argparse.ArgumentParser:
    d = ServerSettings()
    p = argparse.ArgumentParser(prog="taskembed serve", description="Serve a model over an OpenAI- and "
                                "Jina-compatible HTTP API (POST /v1/embeddings, /v1/late_chunking; docs at /docs)")
    p.add_argument("--model", help="model folder (official jina-embeddings-v3 layout) or Hugging Face hub id, "
                   "e.g. jinaai/jina-embeddings-v3 (default: the bundled model)")
    p.add_argument("--revision", help="branch, tag or commit of a hub id (default: main)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", action="append", dest="names",
                   help="model id clients send (repeatable; default: the directory name)")
    p.add_argument("--api-key", action="append", dest="api_keys",
                   help=f"require `Authorization: Bearer KEY` (repeatable; or env {API_KEY_ENV}, comma-separated)")
    p.add_argument("--default-task", help="task when a request gives none (default: base weights, no adapter)")
    p.add_argument("--max-batch-tokens", type=int, default=d.max_batch_tokens,
                   help="token budget of one batcher step and of one padded forward pass")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help="how long a step waits for more requests while some are arriving")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="inputs waiting before 503")
    p.add_argument("--max-queue-tokens", type=int, default=d.max_queue_tokens, help="tokens waiting before 503")
    p.add_argument("--max-inputs", type=int, default=d.max_inputs, help="inputs per request")
    p.add_argument("--max-request-tokens", type=int, default=d.max_request_tokens,
                   help="tokens per request, all texts together after truncation (over: 413)")
    p.add_argument("--max-length", type=int,
                   help="tokens per text (default: 8192, or a rotary model's tokenizer model_max_length)")
    p.add_argument("--max-doc-tokens", type=int, default=d.max_doc_tokens, help="late chunking: tokens per document")
    p.add_argument("--late-window", type=int, help="late chunking: tokens per macro window (default: context)")
    p.add_argument("--late-overlap", type=int, help="late chunking: tokens shared by windows (default window/8)")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--read-timeout", type=float, default=d.read_timeout_s,
                   help="seconds for a request's headers, and again for its body (408), to arrive")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on SIGTERM: seconds for running requests to finish before they get a 503")
    p.add_argument("--max-connections", type=int, default=1024,
                   help="open connections and requests at once; beyond it uvicorn answers 503 (plain text)")
    p.add_argument("--keep-alive", type=int, default=5, help="seconds an idle keep-alive connection stays open")
    p.add_argument("--device", help="torch device, e.g. cuda (default: cpu)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice, all cores)")
    p.add_argument("--int8", action="store_true", help="int8 Linear layers on CPU (faster, cosine ~0.998 to fp32)")
    p.add_argument("--index", help="vector index folder (`taskembed index`) to serve at POST /v1/search")
    p.add_argument("--log-level", default="info")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = args.model or checkpoint.default_model_dir()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        from .. import load
        from ..allocator import limit_arenas
        from . import server
    except ModuleNotFoundError as e:
        print(f"error: {e.name} is missing: pip install 'taskembed[serve]'", file=sys.stderr)
        return 2
    limit_arenas()  # before the server's threads start: their memory goes back with the idle trim
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    keys = list(args.api_keys or [])
    keys += [k.strip() for k in os.environ.get(API_KEY_ENV, "").split(",") if k.strip()]
    try:
        emb = load(model, device=args.device, int8=args.int8, revision=args.revision)
        settings = ServerSettings(
            model_names=args.names or [Path(model).resolve().name], api_keys=keys,
            max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
            max_queue_tokens=args.max_queue_tokens, max_inputs=args.max_inputs,
            max_request_tokens=args.max_request_tokens, max_length=args.max_length,
            max_doc_tokens=args.max_doc_tokens, late_window=args.late_window, late_overlap=args.late_overlap,
            default_task=args.default_task, max_body_bytes=args.max_body_bytes, read_timeout_s=args.read_timeout,
        )
        app = create_app(emb, settings)
        if args.index:
            from ..index import VectorIndex
            from .search import register_search

            register_search(app, VectorIndex.open(args.index))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # The no-task warning is for library users; a server states its default in /v1/models instead.
    warnings.filterwarnings("ignore", message="no task given")
    print(f"serving {model} as {settings.model_names[0]!r} on http://{args.host}:{args.port} "
          f"(docs: /docs; API keys: {'on' if keys else 'off'})", file=sys.stderr)
    # SIGTERM/SIGINT: stop accepting, /health says draining, running requests finish or get a 503.
    server.serve(app, args.host, args.port, shutdown_timeout_s=args.shutdown_timeout, log_level=args.log_level,
                 read_timeout_s=args.read_timeout, max_connections=args.max_connections, keep_alive_s=args.keep_alive)
    return 0
