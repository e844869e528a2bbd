"""``tiniest.optimize`` and the model's own forward: same function as the reference math, any batch size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import tiniest
from tiniest import Block, Tiniest
from tiniest.optimize import FastTiniest, OptimizedTiniest, compiler_available, optimize


def reference_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """The published Block arithmetic, written out independently of ``Block.forward``."""
    identity, small, large, dilated = torch.chunk(x, 4, dim=1)
    mixed = torch.cat([identity, block.dwconv1(small), block.dwconv2(large), block.dwconv3(block.pool(dilated))], 1)
    normed = block.ln.ln(mixed.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    value, gate = torch.chunk(block.fc1(normed), 2, dim=1)
    return block.fc2(value * torch.tanh(torch.exp(value)) * gate) + x * block.rs


def random_model(seed: int = 0) -> Tiniest:
    """A model whose every parameter (LayerNorm affines and ``rs`` included) is far from its default."""
    torch.manual_seed(seed)
    model = Tiniest()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("ln.weight", "rs")):
                param.uniform_(0.5, 1.5)
            elif name.endswith("ln.bias"):
                param.uniform_(-0.3, 0.3)
    return model.eval()


def inputs(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) - 0.5


@pytest.mark.parametrize("grad", [False, True])
def test_block_forward_is_the_reference_arithmetic(grad: bool) -> None:
    block = random_model().l4
    x = torch.randn(3, 80, 16, 16, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        got, want = block(x), reference_block(block, x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    if grad:  # the in-place shortcut must not leak into training
        got.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()


def test_fast_tiniest_matches_the_model_eager() -> None:
    model = random_model()
    fast = FastTiniest(model)
    for batch in (1, 4):
        x = inputs(batch)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), model(x), rtol=0, atol=1e-4)
    assert not any(p.requires_grad for p in fast.parameters())


def test_optimize_copies_and_rejects_other_modules() -> None:
    model = random_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimized = optimize(model, compile=False)
    assert isinstance(optimized, OptimizedTiniest) and not optimized.compiled and not optimized.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(TypeError):
        optimize(nn.Linear(2, 2))


def test_no_compiler_means_the_eager_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINIEST_NO_COMPILE", "1")
    assert not compiler_available()
    assert not optimize(random_model()).compiled


def test_compiled_path_handles_any_batch_size_with_one_graph() -> None:
    if not compiler_available():
        pytest.skip("no C++ compiler: optimize() uses the eager fallback, tested above")
    model = random_model(seed=3)
    optimized = optimize(model)
    assert optimized.compiled
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    for batch in (5, 1, 2, 17, 70):
        x = inputs(batch, seed=batch)
        with torch.no_grad():
            torch.testing.assert_close(optimized(x), model(x), rtol=0, atol=1e-4)
    assert optimized.compiled, "compilation fell back to eager"
    assert counters["stats"]["unique_graphs"] == 1, "a batch size triggered a recompilation"


def test_optimized_published_model_agrees_on_all_of_cifar10_test(shared_checkpoint: Path, shared_cifar10: Path) -> None:
    from tiniest.data import load_split

    model = tiniest.tiniest(weights=str(shared_checkpoint))
    optimized = optimize(model)
    test = load_split(shared_cifar10, "test")
    assert len(test.labels) == 10_000
    plain, fast = [], []
    with torch.inference_mode():
        for batch in test.images.split(500):
            x = batch.float() / 255 - 0.5
            plain.append(model(x))
            fast.append(optimized(x))
    want, got = torch.cat(plain), torch.cat(fast)
    assert (got - want).abs().max().item() <= 1e-4
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert int((got.argmax(1) == test.labels).sum()) == 9463


def test_tiniest_optimize_stays_callable_after_the_submodule_is_imported() -> None:
    import tiniest.optimize  # rebinds the package attribute to the submodule

    model = random_model()
    optimized = tiniest.optimize(model, compile=False)
    x = inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(optimized(x), model(x), rtol=0, atol=1e-4)
