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
def torch_threads() -> Iterator[None]:
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


@pytest.mark.parametrize(
    ("free", "budget", "expected"), [(0.2, 2, 1), (8.0, 2, 2), (8.0, 1, 1), (1.4, 4, 1), (2.6, 4, 3)]
)
def test_chunks_run_in_the_main_thread_on_the_free_cores_within_the_users_threads(
    monkeypatch: pytest.MonkeyPatch, free: float, budget: int, expected: int
) -> None:
    monkeypatch.setattr(threads, "_free_cores", lambda: free)
    torch.set_num_threads(budget)
    parts, run = chunks(3), Recorder()
    out = run_chunks(run, parts)
    assert all(torch.allclose(o, p.sum(dim=(1, 2, 3)) * 2) for o, p in zip(out, parts, strict=True)), "in order"
    assert run.seen == 3 * [(threading.get_ident(), expected)]
    assert torch.get_num_threads() == budget, "the caller's setting is left as it was"


def test_the_count_is_chosen_again_for_each_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """A neighbour that starts during a large batch: the next chunk already runs on one thread."""
    free = iter([8.0, 8.0, 0.3, 0.3])
    monkeypatch.setattr(threads, "_free_cores", lambda: next(free))
    torch.set_num_threads(2)
    run = Recorder()
    run_chunks(run, chunks(4))
    assert [count for _, count in run.seen] == [2, 2, 1, 1]


@pytest.mark.parametrize("budget", [1, 2])
def test_any_other_thread_runs_its_chunks_on_one_openmp_thread(monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    """A server's request thread keeps no team of OpenMP threads: one would slow every team in the process."""
    monkeypatch.setattr(threads, "_free_cores", lambda: 64.0)
    torch.set_num_threads(budget)
    run = Recorder()
    caller = threading.Thread(target=lambda: run_chunks(run, chunks(2)))
    caller.start()
    caller.join()
    assert run.seen == 2 * [(caller.ident, 1)]


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
