"""A micro-batcher: non-streaming requests that arrive within a few milliseconds of each other go to
the engine in one ``generate`` call (the engine sorts them by length into left-padded batches).

One worker thread owns the engine while it generates (it holds ``engine_lock``, which the API's
streaming path takes too, so the engine and its tokenizer are never used from two threads at
once). Only greedy requests with identical parameters share a call: sampled requests (temperature
> 0) run alone so that ``seed`` gives the same answer whatever else is in flight — batched greedy
generation gives the same tokens as one-by-one (tests/test_engine.py checks it). If a shared call fails, its requests
are retried one by one so only the faulty request gets the error. ``window_ms=0`` disables
grouping (every request is its own call): the baseline of ``bench/bench_api.py``.

Streaming requests go through the same queue (:meth:`MicroBatcher.submit_stream`) and run alone on
the same worker, so one ``max_queue`` limit (503 when full) and one engine at a time hold for plain
and streaming requests alike; a stream's ``cancel`` event (its client went away) stops its
generation at the next token, or drops it from the queue before it starts.

:meth:`MicroBatcher.drain` (graceful shutdown) refuses new requests, fails the waiting ones with
:class:`ShuttingDown`, stops running streams at their next token (they end with an error) and lets
a running ``generate`` call finish; :meth:`MicroBatcher.abort` stops that too.
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from ..inference.engine import ChatRequest, GenerationParams


class QueueFull(RuntimeError):
    pass


class ShuttingDown(RuntimeError):
    """The server is stopping (SIGTERM): the request was not (fully) answered."""


def supports_usage(fn, name: str = "usage") -> bool:
    """Whether an engine method accepts the optional ``usage`` out-parameter (LocalEngine does)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


@dataclass
class _Item:
    request: ChatRequest
    params: GenerationParams
    future: Future = field(default_factory=Future)
    on_delta: Callable[[str], None] | None = None  # a streaming request
    cancel: threading.Event = field(default_factory=threading.Event)


class MicroBatcher:
    def __init__(
        self, engine, engine_lock: threading.Lock, window_ms: float = 10.0, max_batch: int = 8, max_queue: int = 256
    ):
        self.engine = engine
        self.engine_lock = engine_lock
        self.window = max(0.0, float(window_ms)) / 1000.0
        self.max_batch = max(1, int(max_batch))
        self.max_queue = max(1, int(max_queue))
        self._usage = supports_usage(engine.generate)
        self._gen_cancel = supports_usage(engine.generate, "cancel")
        self._stream_usage = supports_usage(engine.stream)
        self._stream_cancel = supports_usage(engine.stream, "cancel")
        self.draining = False
        self._abort = threading.Event()  # stops a running generate call (shutdown after the grace period)
        self._running: list[_Item] = []
        self._q: queue.Queue = queue.Queue()
        self.calls = 0  # engine.generate calls made (for the benchmark / tests)
        self.batched = 0  # requests answered
        self._thread = threading.Thread(target=self._run, name="geovl-batcher", daemon=True)
        self._thread.start()

    def _put(self, item: _Item) -> Future:
        if self.draining:
            raise ShuttingDown("the server is shutting down; try again later / 服务器正在关闭")
        waiting = self.queued()
        if waiting >= self.max_queue:
            raise QueueFull(f"{waiting} requests are waiting; try again later / 服务器繁忙")
        self._q.put(item)
        return item.future

    def submit(self, request: ChatRequest, params: GenerationParams) -> Future:
        """A future of ``(text, usage dict or None)``."""
        return self._put(_Item(request, params))

    def submit_stream(
        self, request: ChatRequest, params: GenerationParams, on_delta: Callable[[str], None], cancel: threading.Event
    ) -> Future:
        """Queue a streaming request: ``on_delta`` receives each text delta (from the worker thread);
        the future gives the usage dict (``{}`` when the engine reports none) when the answer is done.
        Setting ``cancel`` stops it at the next token (or before it starts)."""
        return self._put(_Item(request, params, on_delta=on_delta, cancel=cancel))

    def queued(self) -> int:
        """Requests waiting (not counting those whose client left; the worker skips them)."""
        with self._q.mutex:
            return sum(1 for it in self._q.queue if it is not None and not it.future.cancelled())

    def running(self) -> int:
        return len(self._running)

    def drain(self) -> None:
        """Graceful shutdown: refuse new requests, fail the waiting ones, stop running streams."""
        self.draining = True
        while True:
            try:
                it = self._q.get_nowait()
            except queue.Empty:
                break
            if it is None:
                self._q.put(None)
                break
            it.cancel.set()
            if it.future.set_running_or_notify_cancel():
                it.future.set_exception(ShuttingDown("the server shut down before this request ran / 服务器已关闭"))
        for it in list(self._running):
            if it.on_delta is not None:
                it.cancel.set()

    def abort(self) -> None:
        """Stop the running generate call too (its requests get :class:`ShuttingDown`)."""
        self.drain()
        self._abort.set()
        for it in list(self._running):
            it.cancel.set()

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5)

    # -- worker --------------------------------------------------------------------------------
    def _collect(self, first: _Item) -> tuple[list[_Item], list[_Item], bool]:
        """(plain requests to group, streams met on the way, stop)."""
        batch, streams, stop = [first], [], False
        if self.window <= 0:
            return batch, streams, stop
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
            (streams if nxt.on_delta is not None else batch).append(nxt)
        return batch, streams, stop

    def _run(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            if first.on_delta is not None:
                self._run_stream(first)
                continue
            batch, streams, stop = self._collect(first)
            groups: dict = {}
            for it in batch:
                key = ("greedy", it.params.max_new_tokens) if it.params.temperature == 0 else ("alone", id(it))
                groups.setdefault(key, []).append(it)
            for items in groups.values():
                self._run_group(items)
            for it in streams:
                self._run_stream(it)
            if stop:
                return

    def _run_stream(self, it: _Item) -> None:
        if not it.future.set_running_or_notify_cancel():
            return
        if it.cancel.is_set():  # the client left (or the server is stopping) while it waited
            it.future.set_exception(
                ShuttingDown("cancelled before it started") if self.draining else RuntimeError("cancelled")
            )
            return
        usage: dict = {}
        kw = {"usage": usage} if self._stream_usage else {}
        if self._stream_cancel:
            kw["cancel"] = it.cancel
        self._running.append(it)
        try:
            with self.engine_lock:
                gen = self.engine.stream(it.request, it.params, **kw)
                try:
                    for delta in gen:
                        it.on_delta(delta)
                        if it.cancel.is_set():  # engines without a cancel parameter stop here
                            break
                finally:
                    gen.close()
        except BaseException as e:  # noqa: BLE001 - handed to the stream
            it.future.set_exception(e)
            return
        finally:
            self._running.remove(it)
        if it.cancel.is_set() and self.draining:
            it.future.set_exception(
                ShuttingDown("the server is shutting down; the answer was cut short / 服务器正在关闭，回答未完成")
            )
        else:
            it.future.set_result(usage)

    def _call(self, items: list[_Item]) -> list[tuple[str, dict | None]]:
        usage: list = []
        kw = {"usage": usage} if self._usage else {}
        if self._gen_cancel:
            kw["cancel"] = self._abort
        with self.engine_lock:
            self.calls += 1
            texts = self.engine.generate([it.request for it in items], items[0].params, **kw)
        if self._abort.is_set():
            raise ShuttingDown("the server shut down before the answer was complete / 服务器已关闭，回答未完成")
        rows = usage if len(usage) == len(texts) else [None] * len(texts)
        return list(zip(texts, rows))

    def _run_group(self, items: list[_Item]) -> None:
        live = [it for it in items if it.future.set_running_or_notify_cancel()]
        if not live:
            return
        self._running.extend(live)
        try:
            self._run_live(live)
        finally:
            for it in live:
                self._running.remove(it)

    def _run_live(self, live: list[_Item]) -> None:
        try:
            results = self._call(live)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting request(s)
            if len(live) == 1 or isinstance(e, ShuttingDown):
                for it in live[1:]:
                    it.future.set_exception(e)
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
