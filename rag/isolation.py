"""Work on untrusted bytes (parsing, chunking, upload checks) in worker processes that can be killed.

A hostile document must not hold its caller: in a thread it keeps the GIL (so the caller's lease
renewals and heartbeats stall), it cannot be cancelled, and nothing bounds its memory. Here every
call runs in a process of a pool, with
- a wall-clock timeout: the process is killed (SIGTERM, which kills at once - the workers do not
  catch it - then SIGKILL) and `IsolationTimeout` raised only after it is gone;
- an address-space limit (`RLIMIT_AS`, set in the process before it loads anything of its own):
  an allocation beyond it fails (MemoryError, or the process dies) -> `IsolationMemory`;
- cancellation: a cancelled `run` kills its process and returns only when it is gone.
Timeouts, memory and crashes are content errors (422): the input is at fault, a retry would do
the same. A caller can also bound the wait for a free worker (`max_wait_s`: 503 beyond).

The pool is pebble's ProcessPool (a well-kept library: per-task timeouts that stop the worker,
replacement workers, an initializer per worker, workers recycled after `max_tasks`). Workers are
forked by a fork server (multiprocessing's "forkserver"), not from the caller: forking a process
that runs threads (asyncpg, onnxruntime, the tokenizers' thread pool) copies their locks in
whatever state they are; the fork server is a fresh interpreter that imports only `_PRELOAD`.

pebble's futures do not say which process runs a task, and it stops a cancelled task's process
in its own thread some time later; to return from a cancellation only once the process is gone,
each running call owns a slot of a shared array where its process writes its pid.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import multiprocessing
import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from pebble import ProcessExpired, ProcessPool

from core.errors import Unavailable, Unprocessable

__all__ = ["IsolatedPool", "IsolationBusy", "IsolationCrashed", "IsolationError", "IsolationMemory", "IsolationTimeout",
           "default_workers"]

T = TypeVar("T")

# What the fork server imports once, so that a new worker starts in milliseconds. "__main__" (the
# program's entry point, imported as multiprocessing always does, under `__mp_main__`) once there
# rather than by every new worker.
_PRELOAD = ["__main__", "rag.isolation", "rag.parse_pool", "rag.upload_check", "pypdf"]
# A killed worker is gone within milliseconds (SIGTERM kills it); this only bounds a wait that
# something unforeseen would make endless.
_GONE_WAIT_S = 10.0


class IsolationError(Unprocessable):
    """The isolated call was stopped; the detail says why (time, memory or a crash)."""


class IsolationTimeout(IsolationError):
    title = "Took too long"


class IsolationMemory(IsolationError):
    title = "Needed too much memory"


class IsolationCrashed(IsolationError):
    title = "Stopped unexpectedly"


class IsolationBusy(Unavailable):
    """No worker became free within the pool's `max_wait_s` (503: the caller may try again)."""


def default_workers(cap: int) -> int:
    """One worker per CPU this process may use, at most `cap` (more could only wait)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cap, cpus))


# --- in the worker process -------------------------------------------------------------------

_pids: Any = None  # the shared array of running calls' pids (see IsolatedPool)


def _init_worker(max_memory_mb: int, pids: Any, setup: Callable[..., None] | None, setup_args: tuple[Any, ...]) -> None:
    global _pids
    _pids = pids
    # pebble makes SIGTERM run Python cleanup, which waits for the interpreter: a parse stuck in
    # C code (a regex) would delay it until pebble's SIGKILL seconds later. Nothing here needs
    # cleaning up, so SIGTERM kills at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # The tokenizers' thread pool reserves address space per thread (malloc arenas): bounded, so
    # the limit means the same on a machine with many cores. The pool parallelises documents.
    os.environ.setdefault("RAYON_NUM_THREADS", "2")
    limit = max_memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file of the document
    if setup is not None:
        setup(*setup_args)


def _call_in_slot(slot: int, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    _pids[slot] = os.getpid()
    try:
        return fn(*args)
    finally:
        _pids[slot] = 0


def _ready() -> int:
    return os.getpid()


# --- in the caller ---------------------------------------------------------------------------


class IsolatedPool:
    """Worker processes under a memory limit; `run` calls a function in one, with a timeout.

    Calls beyond `workers` wait (cancellably) for a free worker; the timeout counts from the
    start of the call in its worker. `setup(*setup_args)` runs once in every new worker, under
    the memory limit (load what the calls share there). Functions and arguments travel by pickle:
    module-level functions and plain data only.
    """

    def __init__(
        self, *, what: str, workers: int, timeout_s: float, max_memory_mb: int,
        setup: Callable[..., None] | None = None, setup_args: tuple[Any, ...] = (), max_tasks: int = 1000,
        max_wait_s: float | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.what, self.timeout_s, self.max_memory_mb, self.workers = what, timeout_s, max_memory_mb, workers
        self.max_wait_s = max_wait_s
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        self._pids = context.RawArray("q", workers)
        self._free = collections.deque(range(workers))
        self._slots = asyncio.Semaphore(workers)
        self._new_pool = functools.partial(
            ProcessPool, max_workers=workers, max_tasks=max_tasks, initializer=_init_worker,
            initargs=(max_memory_mb, self._pids, setup, setup_args), context=context,
        )
        self._pool = self._new_pool()
        self._started: ProcessPool | None = None

    async def start(self, within_s: float = 60.0) -> None:
        """Wait until a worker answers: a limit too low to load `setup` shows here, at startup,
        not as documents that never start."""
        try:
            await asyncio.wait_for(self.run(_ready), within_s)
        except (TimeoutError, BrokenProcessPool):
            raise RuntimeError(
                f"the {self.what} workers did not start within {within_s:g} s: is the memory limit "
                f"of {self.max_memory_mb} MB too low to load what they need?"
            ) from None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            async with asyncio.timeout(self.max_wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise IsolationBusy(f"every {self.what} worker stayed busy for {self.max_wait_s:g} s") from None
        try:
            slot = self._free.popleft()
            try:
                try:
                    return await self._run(slot, fn, args)
                except _PoolBroken:
                    # pebble gives up a whole pool when a worker dies while idle (the OOM killer,
                    # an operator) or cannot start; the call never ran, so it gets one new pool.
                    self._replace_pool()
                    return await self._run(slot, fn, args)
            finally:
                self._pids[slot] = 0
                self._free.append(slot)
        finally:
            self._slots.release()

    async def _run(self, slot: int, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        schedule = functools.partial(self._pool.schedule, _call_in_slot, args=(slot, fn, args), timeout=self.timeout_s)
        try:
            if self._started is self._pool:
                future = schedule()
            else:
                # A pool's first call starts its workers (and, the first time in this process,
                # the fork server: a second or so), blocking: not on the event loop.
                future = await asyncio.to_thread(schedule)
                self._started = self._pool
        except RuntimeError as exc:  # "Unexpected error within the Pool": it is broken
            raise _PoolBroken(f"the {self.what} workers stopped unexpectedly") from exc
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # type: ignore[no-untyped-call]  # pebble stops the process of a running task
            await asyncio.shield(asyncio.to_thread(self._wait_gone, slot))
            raise
        except BrokenProcessPool as exc:
            raise _PoolBroken(f"the {self.what} workers stopped unexpectedly") from exc
        except TimeoutError:  # pebble has stopped the process
            raise IsolationTimeout(f"{self.what} took longer than {self.timeout_s:g} s") from None
        except MemoryError:
            raise IsolationMemory(f"{self.what} needed more than {self.max_memory_mb} MB of memory") from None
        except ProcessExpired as exc:
            raise self._crashed(exc.exitcode) from None

    def _replace_pool(self) -> None:
        broken, self._pool = self._pool, self._new_pool()
        # Stopping joins pebble's threads: not on the event loop.
        threading.Thread(target=_stop, args=(broken,), name="isolation-stop", daemon=True).start()

    def _crashed(self, exitcode: int | None) -> IsolationError:
        if exitcode is not None and exitcode < 0:
            name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else str(-exitcode)
            if -exitcode in (signal.SIGKILL, signal.SIGABRT, signal.SIGSEGV):
                # What a failed allocation looks like outside Python (Rust aborts, the OOM killer).
                return IsolationMemory(
                    f"{self.what} stopped ({name}), most likely over its {self.max_memory_mb} MB memory limit")
            return IsolationCrashed(f"{self.what} stopped unexpectedly ({name})")
        return IsolationCrashed(f"{self.what} stopped unexpectedly (exit code {exitcode})")

    def _wait_gone(self, slot: int) -> None:
        pid = self._pids[slot]
        deadline = time.monotonic() + _GONE_WAIT_S
        while pid and time.monotonic() < deadline and self._pids[slot] == pid:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.01)

    def close(self) -> None:
        """Stop the workers (running calls are killed) and wait for them."""
        _stop(self._pool)


class _PoolBroken(BrokenProcessPool):
    """The pool broke before the call ran (a platform problem: the caller may retry)."""


def _stop(pool: ProcessPool) -> None:
    pool.stop()  # type: ignore[no-untyped-call]
    pool.join()
