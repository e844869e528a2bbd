"""How many threads the compiled model uses per call, chosen from the cores that are actually free.

The compiled package's kernels and oneDNN's run OpenMP parallel regions, about 40 per chunk of
``CHUNK`` pictures. Each region ends at a barrier where libgomp's threads spin: when other
processes hold the cores and one of our threads is descheduled, the others spin at every region
until it runs again. Measured on 2 cores beside two 2-thread matmul processes, a picture took
725 ms of CPU at 2 threads against 2.6 ms at 1; on the same cores left idle, 2 threads ran a chunk
twice as fast as 1. So ``run_chunks`` runs every chunk in the caller's thread (the package's
runner holds the GIL: Python threads side by side would take turns) and chooses, for each chunk,
as many OpenMP threads as ``FreeCores`` finds free, at most ``torch.get_num_threads()``: all of
them on an idle machine, one on a busy one. In any thread but the main one (a request's in a
server, a data loader's) a chunk runs on one OpenMP thread: see ``_may_hold_team``.

The thread count is set per thread (OpenMP's ``omp_set_num_threads`` acts on the calling thread
only) and put back after each chunk, so the user's ``torch.set_num_threads`` is neither changed
nor exceeded. ``one_thread_each`` (training's parts, whose ops release the GIL) runs work side by
side on threads of a pool kept for the process, one OpenMP thread each.
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

__all__ = ["FreeCores", "on_free_cores", "one_thread_each", "openmp", "run_chunks", "usable_cores"]

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
    if _openmp_found:  # asked on every call: no lock once found
        return _openmp_found[0]
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


_free_cores = FreeCores()
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_in_use = 0  # threads this process's calls are running on now (so that concurrent calls share the free cores)


def _reset_after_fork() -> None:
    global _pool, _free_cores, _in_use
    _pool, _free_cores, _in_use = None, FreeCores(), 0


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


def _may_hold_team() -> bool:
    """Whether this thread may run OpenMP regions on more than one thread: the main thread only.

    libgomp counts every thread of every team in the process; once there are more than cores, it
    stops spinning at barriers in *all* teams and puts waiting threads to sleep, which made each
    region of every team, the user's plain torch ops included, several times slower for the rest
    of the process (measured on 2 cores: the plain model 2.3x slower at batch 1, the compiled one
    3.7x) after one call from another thread had kept a team of two. The main thread keeps the one
    team torch gives it; any other thread runs one OpenMP thread, a team of none.
    """
    return threading.current_thread() is threading.main_thread()


def _threads_here(budget: int) -> int:
    """OpenMP threads for this thread's next work: one outside the main thread; in it, the free cores
    that this process's other calls do not use, within ``budget``."""
    if not _may_hold_team():
        return 1
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
    with omp.threads(_threads_here(torch.get_num_threads())):
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


def run_chunks(run: Runner, chunks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``[run(c) for c in chunks]`` in the caller's thread, each ``c`` copied channels-last, on threads as above.

    The count is chosen again for each chunk, so a neighbour that starts during a large batch costs
    at most one chunk at the wrong count. Where no OpenMP runtime can be set per thread, all run
    with torch's settings, as before this module.
    """
    omp = openmp()
    if omp is None:
        return [run(c.clone(memory_format=torch.channels_last)) for c in chunks]
    budget = torch.get_num_threads()  # the user's setting, in this thread too
    outputs = []
    for chunk in chunks:
        threads = _threads_here(budget)
        with _claimed(threads), omp.threads(threads):
            outputs.append(run(chunk.clone(memory_format=torch.channels_last)))
    return outputs
