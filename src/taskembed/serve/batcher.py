"""Dynamic batching: requests from many clients share forward passes, run on one worker thread.

Requests arrive already tokenised (the handler does that, so bad input is refused before it queues).
The batcher takes the oldest request, then keeps adding queued ones until the real-token budget is used
or, while more requests are on their way in, a short wait ends. The collected texts, whatever their task
(the encoder picks an adapter per row), are sorted by length and cut into padded forward passes under the
same budget, so one 8k-token text never pads a batch of short ones. Vectors come back full width and
unnormalised; each request then applies its own dimensions / normalisation / quantisation.

While the worker runs one step, new requests queue; the next step takes them at once. The queue is
bounded in inputs: a full queue refuses new work (the server answers 503) instead of growing latency.
A request whose client went away is dropped from the queue before it costs a forward pass.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .. import late_chunking
from ..embedder import Embedder
from .metrics import Metrics

MAX_ROWS_PER_PASS = 512  # more rows per pass buy nothing on CPU and cost activation memory


class QueueFull(Exception):
    """The queue has no room for this request (or the server is shutting down)."""


@dataclass(eq=False)
class Job:
    ids: list[list[int]] = field(default_factory=list)  # one token list per text (embed jobs)
    task_ids: list[int] = field(default_factory=list)
    plan: late_chunking.LateChunkPlan | None = None  # late-chunking jobs run alone
    future: asyncio.Future | None = None
    enqueued: float = 0.0
    cancelled: bool = False

    @property
    def size(self) -> int:
        return len(self.plan.chunk_tokens) if self.plan is not None else len(self.ids)

    @property
    def tokens(self) -> int:
        return self.plan.num_tokens if self.plan is not None else sum(len(x) for x in self.ids)


class Batcher:
    def __init__(
        self,
        emb: Embedder,
        max_batch_tokens: int = 16384,
        max_wait_ms: float = 2.0,
        max_queue: int = 4096,
        metrics: Metrics | None = None,
        late_window: int | None = None,
        late_overlap: int | None = None,
    ) -> None:
        self.emb = emb
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics or Metrics()
        self.late_window = late_window
        self.late_overlap = late_overlap
        self.queue: deque[Job] = deque()
        self.queued_inputs = 0
        # Requests being parsed/tokenised right now: worth the short wait only when someone is coming.
        self.arriving = 0
        self.closing = False
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taskembed-infer")
        self._task = asyncio.create_task(self._loop(), name="taskembed-batcher")

    async def close(self) -> None:
        """Refuse new work, finish everything queued, stop the worker."""
        self.closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    # --- submitting ---------------------------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        if self.closing:
            raise QueueFull("the server is shutting down")
        if self.queued_inputs + job.size > self.max_queue and self.queue:
            self.metrics.rejected.inc()
            raise QueueFull(f"the queue is full ({self.queued_inputs} inputs waiting)")
        job.future = asyncio.get_running_loop().create_future()
        job.enqueued = time.perf_counter()
        self.queue.append(job)
        self.queued_inputs += job.size
        self.metrics.queue_depth.set(self.queued_inputs)
        self._wakeup.set()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if it has not started; a running forward pass finishes."""
        if job.cancelled or job.future is None or job.future.done():
            return
        job.cancelled = True
        if job in self.queue:
            self.queue.remove(job)
            self.queued_inputs -= job.size
            self.metrics.queue_depth.set(self.queued_inputs)
            self.metrics.cancelled.inc()
        job.future.cancel()

    # --- the loop -----------------------------------------------------------------------------------

    def _pop(self) -> Job:
        job = self.queue.popleft()
        self.queued_inputs -= job.size
        self.metrics.queue_depth.set(self.queued_inputs)
        return job

    async def _wait(self, timeout: float | None) -> bool:
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _collect(self) -> list[Job]:
        while not self.queue:
            if self.closing:
                return []
            await self._wait(None)
        first = self._pop()
        if first.plan is not None:
            return [first]
        jobs, tokens = [first], first.tokens
        deadline = time.perf_counter() + self.max_wait
        while tokens < self.max_batch_tokens:
            if not self.queue:
                left = deadline - time.perf_counter()
                if self.arriving <= 0 or left <= 0 or self.closing or not await self._wait(left):
                    break
                continue
            nxt = self.queue[0]
            if nxt.plan is not None or tokens + nxt.tokens > self.max_batch_tokens:
                break
            jobs.append(self._pop())
            tokens += nxt.tokens
        return jobs

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            if not jobs:
                return
            now = time.perf_counter()
            for j in jobs:
                self.metrics.queue_seconds.observe(now - j.enqueued)
            self.metrics.batch_requests.observe(len(jobs))
            try:
                if jobs[0].plan is not None:
                    results = [await loop.run_in_executor(self._executor, self._run_late, jobs[0].plan)]
                else:
                    results = await loop.run_in_executor(self._executor, self._run_embed, jobs)
            except Exception as e:  # a failed forward pass fails its requests, not the server
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            finally:
                self.metrics.inference_seconds.observe(time.perf_counter() - now)
            for j, r in zip(jobs, results, strict=True):
                if not j.future.done():
                    j.future.set_result(r)

    # --- worker thread ------------------------------------------------------------------------------

    def _run_late(self, plan: late_chunking.LateChunkPlan) -> Tensor:
        self.metrics.batch_rows.observe(1)
        self.metrics.batch_tokens.observe(plan.num_tokens)
        return late_chunking.pooled(self.emb, plan, self.late_window, self.late_overlap)

    @torch.inference_mode()
    def _run_embed(self, jobs: list[Job]) -> list[Tensor]:
        rows = [(ji, r) for ji, j in enumerate(jobs) for r in range(len(j.ids))]
        rows.sort(key=lambda x: -len(jobs[x[0]].ids[x[1]]))
        hidden = self.emb.config.hidden_size
        outs = [torch.empty((len(j.ids), hidden), dtype=torch.float32) for j in jobs]
        # Packed passes (the Embedder's default) cost real tokens; padded ones rows x longest.
        packed = getattr(self.emb, "packed", False)
        start = 0
        while start < len(rows):
            width = len(jobs[rows[start][0]].ids[rows[start][1]])  # longest first: the first row sets the width
            end, cost = start, 0
            while end < len(rows) and end - start < MAX_ROWS_PER_PASS:
                n = len(jobs[rows[end][0]].ids[rows[end][1]])
                cost = cost + n if packed else width * (end - start + 1)
                if end > start and cost > self.max_batch_tokens:
                    break
                end += 1
            chunk = rows[start:end]
            ids = [jobs[ji].ids[r] for ji, r in chunk]
            self.metrics.batch_rows.observe(len(ids))
            self.metrics.batch_tokens.observe(sum(map(len, ids)) if packed else width * len(ids))
            # The Embedder's own pass (packed or padded, any quantisation), so server == encode().
            pooled = self.emb.forward_pooled(ids, [jobs[ji].task_ids[r] for ji, r in chunk]).float().cpu()
            for k, (ji, r) in enumerate(chunk):
                outs[ji][r] = pooled[k]
            start = end
        return outs
