"""Drives an LLMEngine from a dedicated thread; requests come from any thread or event loop."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable

from jupyter_qwen.engine.errors import EngineDeadError, EngineStepError, QueueFullError
from jupyter_qwen.engine.llm_engine import LLMEngine, RequestOutput
from jupyter_qwen.sampling_params import SamplingParams

log = logging.getLogger("jupyter_qwen.engine")
RATE_WINDOW_SECONDS = 10.0


def merge_outputs(first: RequestOutput, second: RequestOutput) -> RequestOutput:
    second.new_token_ids = first.new_token_ids + second.new_token_ids
    second.new_text = first.new_text + second.new_text
    second.new_logprobs = first.new_logprobs + second.new_logprobs
    return second


class RequestStream:
    """The outputs of one request, as an async iterator; `abort()` ends it early."""

    def __init__(self, engine: AsyncEngine, request_id: str, loop: asyncio.AbstractEventLoop):
        self.engine = engine
        self.request_id = request_id
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.held: BaseException | None = None
        self.finished = False

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestOutput:
        """The next output; outputs that piled up meanwhile come merged into one."""
        if self.finished:
            raise StopAsyncIteration
        item, self.held = self.held or await self.queue.get(), None
        while isinstance(item, RequestOutput) and not item.finished and not self.queue.empty():
            following = self.queue.get_nowait()
            if isinstance(following, BaseException):
                self.held = following
                break
            item = merge_outputs(item, following)
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        self.finished = item.finished
        return item

    def abort(self) -> None:
        if not self.finished:
            self.finished = True
            self.engine.abort(self.request_id)


class RateMeter:
    """Tokens per second over the last few seconds, from cumulative counters."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS):
        self.window = window
        self.samples: deque[tuple[float, int, int]] = deque()

    def record(self, prompt_total: int, generation_total: int) -> None:
        now = time.monotonic()
        self.samples.append((now, prompt_total, generation_total))
        while len(self.samples) > 2 and self.samples[1][0] < now - self.window:
            self.samples.popleft()

    def rates(self, prompt_total: int, generation_total: int) -> tuple[float, float]:
        if not self.samples:
            return 0.0, 0.0
        start, prompt_start, generation_start = self.samples[0]
        elapsed = max(time.monotonic() - start, 1e-3)
        return ((prompt_total - prompt_start) / elapsed,
                (generation_total - generation_start) / elapsed)


class AsyncEngine:
    def __init__(self, engine: LLMEngine, max_waiting: int = 1024):
        self.engine = engine
        self.max_waiting = max_waiting
        self.state = "running"
        self.error: str | None = None
        self.num_step_failures = 0
        self.before_step: Callable[[], None] | None = None
        self.meter = RateMeter()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._num_queued = 0
        self._queued_lock = threading.Lock()
        self._streams: dict[str, RequestStream] = {}
        self._wakeup = threading.Event()
        self._stopping = False
        self._closed = False
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="jupyter-qwen-engine", daemon=True)
        self._thread.start()

    @property
    def num_waiting(self) -> int:
        return len(self.engine.scheduler.waiting) + self._num_queued

    def submit(self, prompt_ids: list[int], params: SamplingParams,
               request_id: str | None = None, session_id: str | None = None) -> RequestStream:
        """Queue a request; raises at once if it cannot be accepted."""
        self._check_accepting()
        self.engine.check_prompt(prompt_ids)
        request_id = request_id or f"req-{next(self._ids)}"
        stream = RequestStream(self, request_id, asyncio.get_running_loop())
        self._count_queued(+1)
        self._send(("add", request_id, prompt_ids, params, session_id, stream))
        return stream

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       request_id: str | None = None,
                       session_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Submit a request and yield its outputs; leaving early aborts it."""
        stream = self.submit(prompt_ids, params, request_id, session_id)
        try:
            async for output in stream:
                yield output
        finally:
            stream.abort()

    def abort(self, request_id: str) -> None:
        """Forget a request whose caller went away (its stream is told nothing)."""
        self._send(("abort", request_id))

    def abort_request(self, request_id: str, timeout: float = 30.0) -> bool:
        """End a request on someone else's behalf: its stream gets a last output with
        finish_reason "abort" and its KV blocks go back. False for an unknown id."""
        return self.call(lambda engine: self._abort_and_tell(request_id), timeout)

    def running_requests(self, timeout: float = 2.0) -> list[dict] | None:
        """The requests in flight (see `LLMEngine.running_requests`), read on the engine
        thread; None when that thread does not answer in time or no longer runs."""
        if self.state != "running" or self._stopping:
            return None
        try:
            return self.call(LLMEngine.running_requests, timeout)
        except (TimeoutError, EngineDeadError):
            return None

    def call(self, function: Callable[[LLMEngine], object], timeout: float = 30.0):
        """Run `function(engine)` on the engine thread and return its result."""
        if self._stopping:
            raise EngineDeadError(self.error or "the engine is stopped")
        done = threading.Event()
        box: list = []

        def run(engine):
            try:
                box.append((True, function(engine)))
            except Exception as error:  # handed back to the caller
                box.append((False, error))
            done.set()

        self._send(("call", run))
        if not done.wait(timeout):
            raise TimeoutError("the engine thread did not answer in time")
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def rates(self) -> tuple[float, float]:
        return self.meter.rates(self.engine.prompt_tokens_total,
                                self.engine.generation_tokens_total)

    def stop(self, timeout: float = 60.0) -> None:
        if self._closed:
            return
        self._closed = self._stopping = True
        self._wakeup.set()
        self._thread.join(timeout)
        self._fail_streams(EngineDeadError("the server is shutting down"))
        self._reject_commands()
        if self.state != "dead":
            self.state = "stopped"
        self._close_engine()

    def _close_engine(self) -> None:
        """Release the engine's memory; only a dead engine's failing bookkeeping is forgiven."""
        try:
            self.engine.close()
        except Exception:
            if self.state != "dead":
                raise
            log.warning("the dead engine's requests could not be aborted; its memory is "
                        "released all the same", exc_info=True)

    def _check_accepting(self) -> None:
        if self.state == "dead":
            raise EngineDeadError(f"the engine is dead: {self.error}")
        if self._stopping or self.state != "running":
            raise EngineDeadError("the engine is stopped")
        if self.num_waiting >= self.max_waiting:
            raise QueueFullError(f"{self.num_waiting} requests are already waiting "
                                 f"(limit {self.max_waiting}); retry later")

    def _send(self, command: tuple) -> None:
        self._commands.put(command)
        self._wakeup.set()
        if self._stopping:
            self._reject_commands()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as error:
            log.exception("the engine thread failed and is now dead")
            self._die(f"the engine thread failed: {error!r}")
        finally:
            self._reject_commands()

    def _loop(self) -> None:
        while not self._stopping:
            self._drain_commands()
            if not self.engine.has_unfinished_requests():
                self.meter.record(self.engine.prompt_tokens_total,
                                  self.engine.generation_tokens_total)
                self._wakeup.wait(timeout=1.0)
                self._wakeup.clear()
                continue
            self._step()

    def _reject_commands(self) -> None:
        """Answer what arrived too late to run: the engine is stopping."""
        error = EngineDeadError(self.error or "the engine is stopped")
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command[0] == "add":
                self._count_queued(-1)
                stream = command[-1]
                _put_threadsafe(stream, error)

    def _step(self) -> None:
        try:
            if self.before_step is not None:
                self.before_step()
            outputs = self.engine.step()
        except Exception as error:
            self._recover(error)
            return
        self.meter.record(self.engine.prompt_tokens_total, self.engine.generation_tokens_total)
        self._dispatch(outputs)

    def _recover(self, error: Exception) -> None:
        self.num_step_failures += 1
        log.exception("engine step failed; ending the requests in flight")
        self._fail_streams(EngineStepError(f"the engine step failed: {error!r}"))
        try:
            self.engine.abort_all()
        except Exception as abort_error:
            log.exception("the engine could not recover and is now dead")
            self._die(f"{error!r}; then {abort_error!r}")

    def _die(self, reason: str) -> None:
        self.state, self.error = "dead", reason
        self._stopping = True
        self._fail_streams(EngineDeadError(f"the engine is dead: {reason}"))

    def _drain_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            getattr(self, f"_do_{command[0]}")(*command[1:])

    def _count_queued(self, change: int) -> None:
        with self._queued_lock:
            self._num_queued += change

    def _do_add(self, request_id, prompt_ids, params, session_id, stream) -> None:
        self._count_queued(-1)
        try:
            self.engine.add_request(prompt_ids, params, request_id, session_id)
        except Exception as error:
            _put_threadsafe(stream, error)
            return
        self._streams[request_id] = stream

    def _do_abort(self, request_id) -> None:
        self._streams.pop(request_id, None)
        self.engine.abort(request_id)

    def _do_call(self, run) -> None:
        run(self.engine)

    def _abort_and_tell(self, request_id: str) -> bool:
        output = self.engine.abort(request_id)
        if output is None:
            return False
        self._dispatch([output])
        return True

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
        for output in outputs:
            stream = (self._streams.pop if output.finished else self._streams.get)(
                output.request_id, None)
            if stream is not None:
                by_loop[stream.loop].append((stream.queue, output))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:
                for _, output in items:
                    self._do_abort(output.request_id)

    def _fail_streams(self, error: BaseException) -> None:
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            _put_threadsafe(stream, error)


def _put_threadsafe(stream: RequestStream, item) -> None:
    with contextlib.suppress(RuntimeError):
        stream.loop.call_soon_threadsafe(stream.queue.put_nowait, item)


def _deliver(items: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    for stream_queue, output in items:
        stream_queue.put_nowait(output)
