"""The thread plan of the compiled model: same answers, never more threads than ``torch.set_num_threads`` allows."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

from tiniest import Tiniest
from tiniest.fast import threads
from tiniest.fast.optimized import CHUNK, optimize
from tiniest.fast.threads import FreeCores, openmp, run_chunks, usable_cores

pytestmark = pytest.mark.skipif(openmp() is None, reason="no OpenMP runtime found to set per thread")


@pytest.fixture(autouse=True)
def torch_threads(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(threads, "_fastest", threads.Fastest())  # no timings from other tests
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


class Recorder:
    """A runner that notes the thread and OpenMP thread count each chunk ran with."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        omp = openmp()
        assert omp is not None
        assert x.is_contiguous(memory_format=torch.channels_last), "chunks arrive in the package's layout"
        with self._lock:
            self.seen.append((threading.get_ident(), omp.get()))
        return x.sum(dim=(1, 2, 3)) * 2


def chunks(count: int) -> list[torch.Tensor]:
    return list(torch.rand(count * CHUNK, 3, 32, 32, generator=torch.Generator().manual_seed(0)).split(CHUNK))


@pytest.mark.parametrize("budget", [1, 2, 3])
def test_several_chunks_run_one_openmp_thread_each_on_at_most_the_users_threads(budget: int) -> None:
    torch.set_num_threads(budget)
    parts, run = chunks(7), Recorder()
    out = run_chunks(run, parts)
    assert all(torch.allclose(o, p.sum(dim=(1, 2, 3)) * 2) for o, p in zip(out, parts, strict=True)), "in order"
    assert {count for _, count in run.seen} == {1}
    assert len({thread for thread, _ in run.seen}) <= min(budget, usable_cores())
    assert torch.get_num_threads() == budget, "the caller's setting is left as it was"


@pytest.mark.parametrize(
    ("free", "budget", "expected"), [(0.2, 2, 1), (8.0, 2, 2), (8.0, 1, 1), (1.4, 4, 1), (2.6, 4, 3)]
)
def test_one_chunk_gets_the_free_cores_within_the_users_threads(
    monkeypatch: pytest.MonkeyPatch, free: float, budget: int, expected: int
) -> None:
    monkeypatch.setattr(threads, "_free_cores", lambda: free)
    torch.set_num_threads(budget)
    run = Recorder()
    run_chunks(run, chunks(1))
    ((thread, count),) = run.seen
    assert count == expected
    assert thread == threading.get_ident(), "the main thread runs its lone chunk itself"
    assert torch.get_num_threads() == budget
    run = Recorder()
    monkeypatch.setattr(threads, "_fastest", threads.Fastest())  # the same first choice again
    caller = threading.Thread(target=lambda: run_chunks(run, chunks(1)))  # a request's thread, say
    caller.start()
    caller.join()
    ((thread, count),) = run.seen
    assert count == expected
    assert (thread == caller.ident) == (expected == 1), "several threads: on the pool's (they keep their team)"


def test_a_new_thread_per_call_follows_the_users_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server's request thread starts with OpenMP's default; torch's setting is what counts."""
    monkeypatch.setattr(threads, "_free_cores", lambda: 64.0)
    torch.set_num_threads(1)
    run = Recorder()
    caller = threading.Thread(target=lambda: run_chunks(run, chunks(1)))
    caller.start()
    caller.join()
    assert [count for _, count in run.seen] == [1]


def test_an_error_in_a_chunk_reaches_the_caller() -> None:
    torch.set_num_threads(2)

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("bad chunk")

    with pytest.raises(RuntimeError, match="bad chunk"):
        run_chunks(broken, chunks(4))


def test_free_cores_stays_within_the_usable_cores() -> None:
    free = FreeCores()
    for _ in range(3):
        assert 0.0 <= free() <= usable_cores()


@pytest.mark.parametrize("budget", [1, 2])
def test_the_optimized_model_answers_as_before_under_any_thread_count(budget: int) -> None:
    torch.manual_seed(0)
    model = Tiniest().eval()
    fast = optimize(model, mode="eager")
    torch.set_num_threads(budget)
    x = torch.rand(2 * CHUNK + 3, 3, 32, 32) - 0.5
    with torch.no_grad():
        want, got = model(x), fast(x)
    assert torch.equal(want.argmax(1), got.argmax(1))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert torch.get_num_threads() == budget


@pytest.mark.parametrize("grad", [True, False])
def test_one_thread_each_keeps_order_and_grad_mode_on_one_openmp_thread_each(grad: bool) -> None:
    torch.set_num_threads(2)
    omp = openmp()
    assert omp is not None

    def seen(item: int) -> tuple[int, int, bool]:
        return item, omp.get(), torch.is_grad_enabled()

    with torch.set_grad_enabled(grad):
        out = threads.one_thread_each(seen, list(range(9)))
    assert out == [(item, 1, grad) for item in range(9)]
    assert torch.get_num_threads() == 2


def test_a_training_step_has_the_same_gradients_under_any_thread_count() -> None:
    """Parts on one thread each, summed in order: a resumed run's bits do not depend on the threads or the load."""
    from tiniest.training.loop import PART, _backward

    torch.manual_seed(0)
    model = Tiniest().train()
    x = torch.rand(2 * PART + 5, 3, 32, 32) - 0.5
    targets = torch.stack([torch.randint(0, 10, (len(x),)).float(), torch.randint(0, 10, (len(x),)).float(),
                           torch.rand(len(x))], dim=1)
    gradients = []
    for budget in (1, 2, 3):
        torch.set_num_threads(budget)
        model.zero_grad(set_to_none=True)
        loss = _backward(model, x, targets)
        gradients.append([loss, *(p.grad for p in model.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(gradients[0], gradients[1], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(gradients[0], gradients[2], strict=True))

    from tiniest.training.augment import mixup_loss

    model.zero_grad(set_to_none=True)
    whole = mixup_loss(model(x), targets)
    whole.backward()
    torch.testing.assert_close(gradients[0][0], whole.detach())
    for part_sum, param in zip(gradients[0][1:], model.parameters(), strict=True):
        torch.testing.assert_close(part_sum, param.grad, atol=1e-5, rtol=1e-4)


def test_on_a_busy_machine_one_chunk_runs_on_the_thread_count_that_ran_faster_and_retries_the_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [100.0]
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock[0])
    fastest = threads.Fastest()
    assert fastest.choose(1) == 1
    assert fastest.choose(2) == 1, "each count is tried first"
    fastest.record(1, 0.004)
    assert fastest.choose(2) == 2
    fastest.record(2, 0.002)
    assert fastest.choose(2) == 2
    clock[0] += 10 * threads.RETRY_S
    assert fastest.choose(2) == 1, "the slower count is tried again after a while"
    for _ in range(5):  # the load changed: one thread is faster now (a moving average follows)
        fastest.record(1, 0.001)
    assert [fastest.choose(2) for _ in range(3)] == [1, 1, 1]


def test_a_busy_machine_records_the_time_of_a_lone_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "_free_cores", lambda: 0.2)
    torch.set_num_threads(2)
    run = Recorder()
    for _ in range(2):
        run_chunks(run, chunks(1))
    counts = [count for _, count in run.seen]
    assert counts == ([1, 2] if usable_cores() > 1 else [1, 1]), "one thread, then the other count once"
    assert torch.get_num_threads() == 2
