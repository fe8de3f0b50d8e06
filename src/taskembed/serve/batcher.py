"""Scheduling: requests from many clients share forward passes, run one pass at a time on a worker thread.

Requests arrive already tokenised (the handler does that, so bad input is refused before it queues).
Work is cut into forward passes of at most `max_batch_tokens` tokens, and every pass is planned afresh
from all unfinished requests, shortest remaining work first: a one-line request that arrives while an
8k-token document runs waits for the pass in flight, not for the whole document. The pass in flight is
what a short request waits behind, so its size bounds short latency: on CPU one max-length text already
saturates the matrix products, and a pass of two takes twice as long for the same throughput. A pass
carrying quick work (a request with at most `quick_tokens` left) takes rows of longer requests only while
it stays within `quick_tokens`, so the short request's own pass is short too. If STARVE_PASSES passes in a
row skipped the oldest unfinished request, it goes first in the next one: a steady stream of short requests
cannot starve a long one, and a queue of long ones (each waiting its turn, not overtaken) does not push
short ones back. A packed pass that runs while quick work arrives pauses between layers for a pass of
that quick work (on the same thread, so the model never runs twice at once): on CPU a max-length text
takes many times longer than a pass of short texts, and a short request should not wait for all of it.
Rows of different requests and tasks share a pass (the encoder picks an adapter per row).
Vectors come back full width and unnormalised; each request then applies its own dimensions /
normalisation / quantisation.

A late-chunking document is one unit (its macro windows see each other), run alone in its turn.

The queue is bounded in inputs and in tokens, counting what has not yet entered a pass: a full queue
refuses new work (the server answers 503 with an estimate of the wait) instead of growing latency. Quick
requests may take one pass's budget of tokens past the cap.
When the queue has been empty for `idle_trim_s`, the C heap's free pages go back to the OS: the CPU
allocator setting keeps freed activations for the next pass, which under load saves page faults but after
it would hold the peak's memory for good.
A request whose client went away is dropped at the next pass boundary. On shutdown, `drain()` refuses
new work and lets the rest finish; `abort()` fails what is left with a 503.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import late_chunking
from ..allocator import trim_heap
from ..batching import TokenBudget
from ..embedder import Embedder
from .metrics import Metrics

MAX_ROWS_PER_PASS = 512  # more rows per pass buy nothing on CPU and cost activation memory
STARVE_PASSES = 4
MAX_RETRY_AFTER_S = 600


class QueueFull(Exception):
    """The queue has no room for this request (or the server is shutting down)."""


class Aborted(Exception):
    """The server stopped before this request finished."""


@dataclass(eq=False)
class Job:
    ids: list[list[int]] = field(default_factory=list)  # one token list per text (embed jobs)
    task_ids: list[int] = field(default_factory=list)
    plan: late_chunking.LateChunkPlan | None = None  # late-chunking jobs run alone
    future: asyncio.Future | None = None
    enqueued: float = 0.0
    cancelled: bool = False
    # scheduling state
    pending: list[int] = field(default_factory=list)  # rows not yet in a pass, longest first
    rows_left: int = 0  # rows not yet finished (pending + in flight)
    out: Tensor | None = None
    seq: int = 0

    @property
    def size(self) -> int:
        return len(self.plan.chunk_tokens) if self.plan is not None else len(self.ids)

    @property
    def tokens(self) -> int:
        return self.plan.num_tokens if self.plan is not None else sum(len(x) for x in self.ids)

    def pending_tokens(self) -> int:
        if self.plan is not None:
            return self.plan.num_tokens if self.pending else 0
        return sum(len(self.ids[r]) for r in self.pending)


class Batcher:
    def __init__(
        self,
        emb: Embedder,
        max_batch_tokens: int = 8192,
        max_wait_ms: float = 2.0,
        max_queue: int = 4096,
        metrics: Metrics | None = None,
        late_window: int | None = None,
        late_overlap: int | None = None,
        max_queue_tokens: int | None = None,
        quick_tokens: int | None = None,
        idle_trim_s: float | None = 1.0,
    ) -> None:
        self.emb = emb
        self.max_batch_tokens = max_batch_tokens
        # A request this small finishes within a few milliseconds' pass: worth keeping long rows out of it.
        self.quick_tokens = max_batch_tokens // 4 if quick_tokens is None else quick_tokens
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.max_queue_tokens = max_queue_tokens
        self.metrics = metrics or Metrics()
        self.late_window = late_window
        self.late_overlap = late_overlap
        self.active: list[Job] = []  # unfinished jobs, in arrival order
        self.queued_inputs = 0  # rows not yet in a pass
        self.queued_tokens = 0
        self.passes = 0
        # Requests being parsed/tokenised right now: worth the short wait only when someone is coming.
        self.arriving = 0
        self.closing = False  # no new work (draining or stopped)
        self._seq = 0
        self._streak = 0  # passes in a row that skipped the oldest unfinished job
        self.idle_trim_s = idle_trim_s
        self.trim = trim_heap  # replaceable (tests)
        self._trimmed = True  # nothing ran since the last trim
        self.preempt = True  # quick passes between the layers of a running pass
        self._quick = threading.Event()  # quick work came while a pass runs
        self._running = False
        self._nested = False  # on the worker thread: inside a pass run between another's layers
        self._nested_s = 0.0
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._rate: float | None = None  # tokens per second of recent passes, for Retry-After
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._event_loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskembed-infer")
        self._task = asyncio.create_task(self._loop(), name="taskembed-batcher")

    def drain(self) -> None:
        """Refuse new work; what is queued or running goes on."""
        self.closing = True
        if self._wakeup is not None:
            self._wakeup.set()

    def abort(self, message: str = "the server is shutting down") -> None:
        """Fail every unfinished job (a pass in flight completes, its results are dropped)."""
        for job in list(self.active):
            self._remove(job)
            if job.future is not None and not job.future.done():
                job.future.set_exception(Aborted(message))

    async def close(self) -> None:
        """Refuse new work, finish everything queued, stop the worker."""
        self.drain()
        if self._task is not None:
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # --- submitting ---------------------------------------------------------------------------------

    def retry_after(self, extra_tokens: int = 0) -> int:
        """Seconds until the queued work (plus `extra_tokens`) is likely done, from recent throughput."""
        rate = self._rate or float(self.max_batch_tokens)  # before any pass: a guess of one pass a second
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil((self.queued_tokens + extra_tokens) / rate)))

    def submit(self, job: Job) -> Job:
        if self.closing:
            raise QueueFull("the server is shutting down")
        if self.active and self.queued_inputs + job.size > self.max_queue:
            self.metrics.rejected.inc()
            raise QueueFull(f"the queue is full ({self.queued_inputs} inputs waiting)")
        tokens = job.tokens
        cap = self.max_queue_tokens
        if cap is not None and job.plan is None and tokens <= self.quick_tokens:
            # Quick work costs a sliver of a pass: one pass of it may queue past the cap, so a queue full
            # of long documents does not turn one-line requests away.
            cap += self.max_batch_tokens
        if self.active and cap is not None and self.queued_tokens + tokens > cap:
            self.metrics.rejected.inc()
            raise QueueFull(f"the queue is full ({self.queued_tokens} tokens waiting)")
        job.future = asyncio.get_running_loop().create_future()
        job.enqueued = time.perf_counter()
        job.seq, self._seq = self._seq, self._seq + 1
        if job.plan is not None:
            job.pending, job.rows_left = [0], 1
        else:
            job.pending = sorted(range(len(job.ids)), key=lambda r: -len(job.ids[r]))
            job.rows_left = len(job.ids)
        self.active.append(job)
        self.queued_inputs += job.size
        self.queued_tokens += tokens
        self._gauges()
        self._wakeup.set()
        if self._running and job.plan is None and tokens <= self.quick_tokens:
            self._quick.set()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: its rows not yet in a pass are dropped; a pass in flight finishes."""
        if job.cancelled or job.future is None or job.future.done():
            return
        job.cancelled = True
        self._remove(job)
        self.metrics.cancelled.inc()
        job.future.cancel()

    def _remove(self, job: Job) -> None:
        if job in self.active:
            self.active.remove(job)
            self.queued_inputs -= job.size if job.plan is not None and job.pending else len(job.pending)
            self.queued_tokens -= job.pending_tokens()
            job.pending = []
            self._gauges()

    def _gauges(self) -> None:
        self.metrics.queue_depth.set(self.queued_inputs)
        self.metrics.queue_tokens.set(self.queued_tokens)

    # --- planning a pass --------------------------------------------------------------------------

    def _plan(self) -> tuple[Job | None, list[tuple[Job, int]]]:
        """The next pass: a late-chunking job alone, or rows (job, row) within the token budget."""
        waiting = [j for j in self.active if j.pending]
        if not waiting:
            return None, []
        left = {j: j.pending_tokens() for j in waiting}
        order = sorted(waiting, key=lambda j: (left[j], j.seq))
        oldest = min(waiting, key=lambda j: j.seq)
        if self._streak >= STARVE_PASSES and order[0] is not oldest:
            order.remove(oldest)
            order.insert(0, oldest)
        if order[0].plan is not None:
            self._streak = 0 if order[0] is oldest else self._streak + 1
            return order[0], []
        chosen: list[tuple[Job, int]] = []
        budget = TokenBudget(self.max_batch_tokens, MAX_ROWS_PER_PASS, getattr(self.emb, "packed", False))
        quick_in = False
        for job in order:
            if job.plan is not None or len(chosen) >= MAX_ROWS_PER_PASS:
                continue
            quick = left[job] <= self.quick_tokens
            limit = self.max_batch_tokens if quick or not quick_in else self.quick_tokens
            keep = []
            for r in job.pending:
                n = len(job.ids[r])
                if budget.fits(n, limit):
                    chosen.append((job, r))
                    budget.add(n)
                    quick_in = quick_in or quick
                else:
                    keep.append(r)
            job.pending = keep
        self._streak = 0 if any(j is oldest for j, _ in chosen) else self._streak + 1
        return None, chosen

    # --- the loop -----------------------------------------------------------------------------------

    async def _wait(self, timeout: float | None) -> bool:
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _gather(self) -> bool:
        """Wait for work; while a pass is not full and requests are arriving, wait a moment for them."""
        while not any(j.pending for j in self.active):
            if self.closing and not self.active:
                return False
            idle = not self.active and not self._trimmed and self.idle_trim_s is not None
            if not await self._wait(self.idle_trim_s if idle else None) and idle:
                self._trimmed = True
                # On the worker thread: a pass never runs beside it, and the event loop never waits on it.
                await asyncio.get_running_loop().run_in_executor(self._executor, self.trim)
        deadline = time.perf_counter() + self.max_wait
        while self.queued_tokens < self.max_batch_tokens and self.arriving > 0 and not self.closing:
            left = deadline - time.perf_counter()
            if left <= 0 or not await self._wait(left):
                break
        return True

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while await self._gather():
            late, rows = self._plan()
            if late is None and not rows:
                continue
            ran = {late} if late is not None else {j for j, _ in rows}
            self._trimmed = False
            start = time.perf_counter()
            for j in ran:
                if j.rows_left == j.size or late is not None:  # first pass of this job
                    self.metrics.queue_seconds.observe(start - j.enqueued)
            n_tokens = late.tokens if late is not None else sum(len(j.ids[r]) for j, r in rows)
            self.queued_tokens -= n_tokens
            self.queued_inputs -= late.size if late is not None else len(rows)
            if late is not None:
                late.pending = []
            self._gauges()
            self.metrics.batch_requests.observe(len(ran))
            self._running, self._nested_s = True, 0.0
            self._quick.clear()
            try:
                if late is not None:
                    result = await loop.run_in_executor(self._executor, self._run_late, late.plan)
                else:
                    ids = [j.ids[r] for j, r in rows]
                    tids = [j.task_ids[r] for j, r in rows]
                    result = await loop.run_in_executor(self._executor, self._forward, ids, tids)
            except Exception as e:  # a failed forward pass fails its requests, not the server
                self._fail(ran, e)
                continue
            finally:
                self._running = False
                self._done_pass(n_tokens, time.perf_counter() - start - self._nested_s)
            if late is not None:
                self._finish(late, result)
                continue
            self._deliver(rows, result)

    def _done_pass(self, n_tokens: int, elapsed: float) -> None:
        self.passes += 1
        self.metrics.inference_seconds.observe(elapsed)
        rate = n_tokens / max(elapsed, 1e-6)
        self._rate = rate if self._rate is None else 0.8 * self._rate + 0.2 * rate

    def _fail(self, jobs, error: Exception) -> None:
        for j in jobs:
            self._remove(j)
            if not j.future.done():
                j.future.set_exception(error)

    def _deliver(self, rows: list[tuple[Job, int]], result: Tensor) -> None:
        for k, (j, r) in enumerate(rows):
            if j.future.done() or j.cancelled:
                continue
            if j.out is None:
                j.out = torch.empty((len(j.ids), result.shape[1]), dtype=torch.float32)
            j.out[r] = result[k]
            j.rows_left -= 1
            if j.rows_left == 0:
                self._finish(j, j.out)

    # --- quick passes between the layers of a running one -------------------------------------------

    def _plan_quick(self) -> list[tuple[Job, int]]:
        """(Event loop) Rows of quick jobs for a pass between layers, taken off the queue."""
        self._quick.clear()
        quick = sorted((j for j in self.active if j.pending and j.plan is None
                        and j.pending_tokens() <= self.quick_tokens), key=lambda j: (j.pending_tokens(), j.seq))
        chosen: list[tuple[Job, int]] = []
        budget = TokenBudget(self.max_batch_tokens, MAX_ROWS_PER_PASS, packed=True)  # quick passes run packed
        for job in quick:
            keep = []
            for r in job.pending:
                n = len(job.ids[r])
                if budget.fits(n):
                    chosen.append((job, r))
                    budget.add(n)
                else:
                    keep.append(r)
            job.pending = keep
        now = time.perf_counter()
        for j in {j for j, _ in chosen}:
            if j.rows_left == j.size:
                self.metrics.queue_seconds.observe(now - j.enqueued)
        self.queued_tokens -= budget.tokens
        self.queued_inputs -= len(chosen)
        self._gauges()
        if chosen:
            self.metrics.batch_requests.observe(len({j for j, _ in chosen}))
        return chosen

    async def _take_quick(self) -> list[tuple[Job, int]]:
        return self._plan_quick()

    def _between_layers(self) -> None:
        """(Worker thread, between two layers of a pass) Run the quick work that came meanwhile."""
        if not self._quick.is_set() or self._event_loop is None:
            return
        loop = self._event_loop
        try:
            rows = asyncio.run_coroutine_threadsafe(self._take_quick(), loop).result(timeout=10)
        except Exception:  # the loop is stopping: the quick work waits for the next pass
            return
        if not rows:
            return
        start = time.perf_counter()
        self._nested = True
        try:
            result = self._forward([j.ids[r] for j, r in rows], [j.task_ids[r] for j, r in rows])
        except Exception as e:
            loop.call_soon_threadsafe(self._fail, {j for j, _ in rows}, e)
            return
        finally:
            self._nested = False
            elapsed = time.perf_counter() - start
            self._nested_s += elapsed
            n = sum(len(j.ids[r]) for j, r in rows)
            loop.call_soon_threadsafe(self._done_pass, n, elapsed)
        loop.call_soon_threadsafe(self._deliver, rows, result)

    def _finish(self, job: Job, result: Tensor) -> None:
        if job in self.active:
            self.active.remove(job)
        if not job.future.done():
            job.future.set_result(result)

    # --- worker thread ------------------------------------------------------------------------------

    def _run_late(self, plan: late_chunking.LateChunkPlan) -> Tensor:
        self.metrics.batch_rows.observe(1)
        self.metrics.batch_tokens.observe(plan.num_tokens)
        return late_chunking.pooled(self.emb, plan, self.late_window, self.late_overlap)

    @torch.inference_mode()
    def _forward(self, ids: list[list[int]], task_ids: list[int]) -> Tensor:
        """One forward pass: full-width pooled vectors (rows, hidden) in fp32 on CPU."""
        packed = getattr(self.emb, "packed", False)
        self.metrics.batch_rows.observe(len(ids))
        self.metrics.batch_tokens.observe(sum(map(len, ids)) if packed else max(map(len, ids)) * len(ids))
        # The Embedder's own pass (packed or padded, any quantisation), so server == encode().
        if self.preempt and packed and not self._nested:
            return self.emb.forward_pooled(ids, task_ids, between=self._between_layers).float().cpu()
        return self.emb.forward_pooled(ids, task_ids).float().cpu()
