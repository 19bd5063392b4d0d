"""A micro-batcher: non-streaming requests that arrive within a few milliseconds of each other go to
the engine in one ``generate`` call (the engine sorts them by length into left-padded batches).

One worker thread owns the engine while it generates (it holds ``engine_lock``, which the API's
streaming path takes too, so the engine and its tokenizer are never used from two threads at
once). Only greedy requests with identical parameters share a call: sampled requests (temperature
> 0) run alone so that ``seed`` gives the same answer whatever else is in flight — batched greedy
generation gives the same tokens as one-by-one (NOTES §3). If a shared call fails, its requests
are retried one by one so only the faulty request gets the error. ``window_ms=0`` disables
grouping (every request is its own call): the baseline of ``bench/bench_api.py``.
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from .engine import ChatRequest, GenerationParams


class QueueFull(RuntimeError):
    pass


def supports_usage(fn) -> bool:
    """Whether an engine method accepts the optional ``usage`` out-parameter (LocalEngine does)."""
    try:
        return "usage" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class _Item:
    request: ChatRequest
    params: GenerationParams
    future: Future = field(default_factory=Future)


class MicroBatcher:
    def __init__(self, engine, engine_lock: threading.Lock, window_ms: float = 10.0, max_batch: int = 8, max_queue: int = 256):
        self.engine = engine
        self.engine_lock = engine_lock
        self.window = max(0.0, float(window_ms)) / 1000.0
        self.max_batch = max(1, int(max_batch))
        self.max_queue = max(1, int(max_queue))
        self._usage = supports_usage(engine.generate)
        self._q: queue.Queue = queue.Queue()
        self.calls = 0  # engine.generate calls made (for the benchmark / tests)
        self.batched = 0  # requests answered
        self._thread = threading.Thread(target=self._run, name="geovl-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: ChatRequest, params: GenerationParams) -> Future:
        """A future of ``(text, usage dict or None)``."""
        if self._q.qsize() >= self.max_queue:
            raise QueueFull(f"{self._q.qsize()} requests are waiting; try again later / 服务器繁忙")
        item = _Item(request, params)
        self._q.put(item)
        return item.future

    def queued(self) -> int:
        return self._q.qsize()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5)

    # -- worker --------------------------------------------------------------------------------
    def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        batch, stop = [first], False
        if self.window <= 0:
            return batch, stop
        deadline = time.monotonic() + self.window
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                nxt = self._q.get(timeout=left) if left > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                stop = True
                break
            batch.append(nxt)
        return batch, stop

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            groups: dict = {}
            for it in batch:
                key = ("greedy", it.params.max_new_tokens) if it.params.temperature == 0 else ("alone", id(it))
                groups.setdefault(key, []).append(it)
            for items in groups.values():
                self._run_group(items)
            if stop:
                return

    def _call(self, items: list[_Item]) -> list[tuple[str, dict | None]]:
        usage: list = []
        kw = {"usage": usage} if self._usage else {}
        with self.engine_lock:
            self.calls += 1
            texts = self.engine.generate([it.request for it in items], items[0].params, **kw)
        rows = usage if len(usage) == len(texts) else [None] * len(texts)
        return list(zip(texts, rows))

    def _run_group(self, items: list[_Item]) -> None:
        live = [it for it in items if it.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self._call(live)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting request(s)
            if len(live) == 1:
                live[0].future.set_exception(e)
                return
            for it in live:  # find the faulty request; the others still get answers
                try:
                    it.future.set_result(self._call([it])[0])
                except BaseException as e1:  # noqa: BLE001
                    it.future.set_exception(e1)
            return
        self.batched += len(live)
        for it, res in zip(live, results):
            it.future.set_result(res)
