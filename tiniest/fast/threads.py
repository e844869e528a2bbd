"""How many threads the compiled model uses per call, chosen from the cores that are actually free.

The compiled package's kernels and oneDNN's run OpenMP parallel regions, about 40 per chunk of
``CHUNK`` pictures. Each region ends at a barrier, so when other
processes hold the cores and one of our threads is descheduled, the others wait for it at every
region: measured on 2 busy cores, a picture took 700 ms of CPU at 2 threads against 3 ms at 1.
So, per call (``run_chunks``):

* **several chunks** (more than ``CHUNK`` pictures) run side by side on up to
  ``torch.get_num_threads()`` threads, each chunk on one thread (one OpenMP thread, no barrier
  between threads): a descheduled thread delays only its own chunk, and the others take the rest.
* **one chunk** runs on as many OpenMP threads as ``FreeCores`` finds free, at most
  ``torch.get_num_threads()``; on a busy machine on one thread (in the caller's) or on all of
  them, whichever ran a picture faster lately (``Fastest``).

The thread count is set per thread (OpenMP's ``omp_set_num_threads`` acts on the calling thread
only), on threads of a pool kept for the process, so the user's ``torch.set_num_threads`` is
neither changed nor exceeded, and a server that calls from a new thread per request does not
make OpenMP start a new team of threads for each request.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar, cast

import torch

__all__ = ["Fastest", "FreeCores", "on_free_cores", "one_thread_each", "openmp", "run_chunks", "usable_cores"]

Runner = Callable[[torch.Tensor], torch.Tensor]
T = TypeVar("T")
R = TypeVar("R")

# How often the load is looked at again: /proc/stat's counters tick at 100 Hz, so shorter windows
# are mostly rounding; longer ones react late to a neighbour that starts or stops.
WINDOW_S = 0.25


class _OpenMP:
    """``omp_set_num_threads``/``omp_get_max_threads`` of the OpenMP runtime torch loaded (per-thread settings).

    With them MKL's own per-thread count where torch links MKL (``mkl_set_num_threads_local``):
    ``torch.set_num_threads`` sets MKL's process-wide count, which its matrix products follow
    otherwise, whatever OpenMP's count in the calling thread.
    """

    def __init__(self, library: ctypes.CDLL) -> None:
        self._set = library.omp_set_num_threads
        self._set.argtypes, self._set.restype = [ctypes.c_int], None
        self._get = library.omp_get_max_threads
        self._get.argtypes, self._get.restype = [], ctypes.c_int
        self._mkl = _mkl_local()

    def get(self) -> int:
        return int(self._get())

    @contextmanager
    def threads(self, count: int) -> Iterator[None]:
        """This thread's OpenMP thread count is ``count`` for the block, then what it was."""
        before = self._get()
        if before == count:
            yield
            return
        self._set(count)
        mkl_before = self._mkl(count) if self._mkl is not None else 0
        try:
            yield
        finally:
            if self._mkl is not None:
                self._mkl(mkl_before)  # 0: MKL's process-wide count again
            self._set(before)


def _mkl_local() -> Callable[[int], int] | None:
    """MKL's per-thread count setter (it returns the thread's previous setting), where torch's library exports it."""
    lib = Path(torch.__file__).parent / "lib"
    for path in sorted(lib.glob("libtorch_cpu.*")):
        try:
            setter = ctypes.CDLL(os.fspath(path)).MKL_Set_Num_Threads_Local  # C call (the lower-case name: Fortran)
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
        return cast("Callable[[int], int]", setter)
    return None


_openmp_lock = threading.Lock()
_openmp_found: list[_OpenMP | None] = []


def openmp() -> _OpenMP | None:
    """The OpenMP runtime torch runs on (the one the compiled package links to), or None where none is found.

    Looked up among the libraries this process has mapped (Linux), then in torch's own ``lib``
    folder; a runtime whose thread count is not torch's (checked) is not used.
    """
    with _openmp_lock:
        if not _openmp_found:
            _openmp_found.append(_find_openmp())
        return _openmp_found[0]


def _find_openmp() -> _OpenMP | None:
    names = ("libgomp", "libomp", "libiomp")
    candidates: list[str] = []
    try:
        for line in Path("/proc/self/maps").read_text().splitlines():
            path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
            if any(name in os.path.basename(path) for name in names) and path not in candidates:
                candidates.append(path)
    except OSError:
        pass
    lib = Path(torch.__file__).parent / "lib"
    candidates += [os.fspath(p) for name in names for p in sorted(lib.glob(f"{name}*"))]
    expected = torch.get_num_threads()  # also initializes this thread's OpenMP setting from torch's
    for path in candidates:
        try:
            found = _OpenMP(ctypes.CDLL(path))
        except (OSError, AttributeError):
            continue
        if found.get() == expected:
            return found
    return None


def usable_cores() -> int:
    """Processors this process may run on: its affinity, lowered by a cgroup CPU quota where one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def _busy_seconds(cpus: set[int]) -> float | None:
    """CPU seconds spent on ``cpus`` by anyone since boot (steal counts as busy), from /proc/stat; None elsewhere."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *fields = line.split()
        if int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / os.sysconf("SC_CLK_TCK")


def _runnable_others() -> float:
    """Threads of other processes runnable right now (``/proc/loadavg``'s running count, less the asking one)."""
    try:
        running = Path("/proc/loadavg").read_text().split()[3].split("/")[0]
        return max(0.0, min(float(running) - 1, os.getloadavg()[0]))
    except (OSError, IndexError, ValueError, AttributeError):
        return 0.0


class FreeCores:
    """How many of this process's cores other processes leave free, measured over the last ``WINDOW_S``.

    Others' use is the CPU time spent on this process's processors (``/proc/stat``) less this
    process's own (``time.process_time``), so the estimate does not depend on how many
    threads this process ran. Before the first window (or without ``/proc/stat``): the running
    count of ``/proc/loadavg`` bounded by the one-minute load.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cores = usable_cores()
        try:
            self._cpus = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self._cpus = set(range(os.cpu_count() or 1))
        self._sample: tuple[float, float, float] | None = None
        self._others = 0.0

    def __call__(self) -> float:
        now = time.monotonic()
        sample = self._sample
        if sample is not None and now - sample[0] < WINDOW_S:
            return max(0.0, self._cores - self._others)
        with self._lock:
            busy, own = _busy_seconds(self._cpus), time.process_time()
            previous = self._sample
            if busy is None:
                self._others = _runnable_others()
            elif previous is None:
                self._others = _runnable_others()
                self._sample = (now, busy, own)
            elif now - previous[0] >= WINDOW_S:
                others = (busy - previous[1] - (own - previous[2])) / (now - previous[0])
                self._others = min(float(self._cores), max(0.0, others))
                self._sample = (now, busy, own)
            return max(0.0, self._cores - self._others)


RETRY_S = 0.5  # how soon the slower thread count is tried again, at the least


class Fastest:
    """For one chunk on a busy machine: one OpenMP thread or ``many``, whichever ran a picture faster lately.

    The load decides which, and cannot be read in advance: where other processes leave parts of the
    cores free, several threads get more of them (the scheduler shares out CPU by thread); where
    they hold the cores, the threads wait for each other at every parallel region. So each count's
    seconds per picture is a moving average of its calls, the faster runs, and the slower is tried
    again every ``RETRY_S`` (the slower it was, the more seldom), so that a change of load is followed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seconds: dict[int, float] = {}
        self._retry_at = 0.0

    def choose(self, many: int) -> int:
        if many <= 1:
            return 1
        with self._lock:
            now = time.monotonic()
            unknown = [count for count in (1, many) if count not in self._seconds]
            if unknown:
                self._retry_at = now + RETRY_S
                return unknown[0]
            best, other = sorted((1, many), key=self._seconds.__getitem__)
            if now < self._retry_at:
                return best
            self._retry_at = now + min(RETRY_S * self._seconds[other] / self._seconds[best], 60 * RETRY_S)
            return other

    def record(self, threads: int, seconds_per_picture: float) -> None:
        with self._lock:
            seen = self._seconds.get(threads)
            self._seconds[threads] = seconds_per_picture if seen is None else seen + 0.3 * (seconds_per_picture - seen)


_free_cores = FreeCores()
_fastest = Fastest()
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_in_use = 0  # threads this process's calls are running on now (so that concurrent calls share the free cores)


def _reset_after_fork() -> None:
    global _pool, _free_cores, _fastest, _in_use
    _pool, _free_cores, _fastest, _in_use = None, FreeCores(), Fastest(), 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)  # a forked child has none of the parent's threads


def _workers() -> ThreadPoolExecutor:
    """The process's pool of threads for chunks, one per usable core, started on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            # torch.get_num_threads() first: torch sets a thread's OpenMP count at its first parallel op,
            # which would otherwise undo the count the pool's threads set for themselves.
            _pool = ThreadPoolExecutor(
                usable_cores(), thread_name_prefix="tiniest-fast", initializer=torch.get_num_threads
            )
        return _pool


@contextmanager
def _claimed(count: int) -> Iterator[None]:
    global _in_use
    with _pool_lock:
        _in_use += count
    try:
        yield
    finally:
        with _pool_lock:
            _in_use -= count


def _intra_op_threads(budget: int) -> int:
    """OpenMP threads for one chunk: the free cores not already used by this process's calls, within ``budget``."""
    free = math.floor(_free_cores() + 0.5) - _in_use
    return max(1, min(budget, free))


@contextmanager
def on_free_cores() -> Iterator[None]:
    """This thread's OpenMP threads, for the block, as many as cores are free, within ``torch.get_num_threads()``.

    ``one_thread_each`` inside the block then runs on no more threads than that: on a busy
    machine a training step takes the CPU of one thread, and not several times as much in threads
    waiting for each other or for a descheduled one.
    """
    omp = openmp()
    if omp is None:
        yield
        return
    with omp.threads(_intra_op_threads(torch.get_num_threads())):
        yield


def one_thread_each(work: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[work(i) for i in items]`` on up to ``torch.get_num_threads()`` threads side by side, one OpenMP thread each.

    The caller's thread takes items too; a descheduled thread delays only its own item. Each item
    runs on exactly one OpenMP thread, so its result does not depend on how many threads ran, nor
    on the load. Grad mode is the caller's in every thread (it is per thread). Where no OpenMP
    runtime can be set per thread, all run in the caller's thread with torch's settings.
    """
    omp = openmp()
    if omp is None:
        return [work(item) for item in items]
    side = min(torch.get_num_threads(), len(items), usable_cores())
    results: list[R | None] = [None] * len(items)
    taken = iter(range(len(items)))
    taking = threading.Lock()
    grad = torch.is_grad_enabled()

    def drain() -> None:
        with omp.threads(1), torch.set_grad_enabled(grad):
            while True:
                with taking:
                    index = next(taken, None)
                if index is None:
                    return
                results[index] = work(items[index])

    with _claimed(side):
        helpers: list[Future[None]] = [_workers().submit(drain) for _ in range(side - 1)]
        drain()  # the caller takes items too
        for helper in helpers:
            helper.result()  # re-raises a helper's error
    return cast("list[R]", results)


def run_chunks(run: Runner, chunks: Sequence[torch.Tensor], *, side_by_side: bool = True) -> list[torch.Tensor]:
    """``[run(c) for c in chunks]``, each ``c`` first copied channels-last, on threads chosen as the module says.

    ``side_by_side=False`` (for a ``run`` that holds the GIL): every chunk in the caller's thread,
    on the OpenMP threads a single chunk would get. Where no OpenMP runtime can be set per thread,
    all run in the caller's thread with torch's settings, as before this module.
    """
    omp = openmp()
    budget = torch.get_num_threads()  # the user's setting, in this thread too
    if omp is None:
        return [run(c.clone(memory_format=torch.channels_last)) for c in chunks]
    if not side_by_side:
        with omp.threads(_intra_op_threads(budget)):
            return [run(c.clone(memory_format=torch.channels_last)) for c in chunks]
    if len(chunks) == 1:
        threads, many = _intra_op_threads(budget), min(budget, max(1, usable_cores() - _in_use))
        tuned = threads < many  # cores taken by others: one thread or several, as they ran lately
        if tuned:
            threads = _fastest.choose(many)
        started = time.perf_counter()
        if threads == 1 or threading.current_thread() is threading.main_thread():
            # In the caller's thread: no hand-over (waking a pool thread can take milliseconds on a busy
            # machine); the main thread keeps its OpenMP team for the process's life.
            with _claimed(threads), omp.threads(threads):
                out = run(chunks[0].clone(memory_format=torch.channels_last))
        else:  # another thread may be a request's, gone after it: the pool's keep their teams
            with _claimed(threads):
                out = _workers().submit(_one, omp, threads, run, chunks[0]).result()
        if tuned:
            _fastest.record(threads, (time.perf_counter() - started) / len(chunks[0]))
        return [out]
    with torch.no_grad():
        return one_thread_each(lambda chunk: run(chunk.clone(memory_format=torch.channels_last)), chunks)


def _one(omp: _OpenMP, threads: int, run: Runner, chunk: torch.Tensor) -> torch.Tensor:
    with omp.threads(threads), torch.no_grad():
        return run(chunk.clone(memory_format=torch.channels_last))
