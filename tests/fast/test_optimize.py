"""``tiniest.optimize`` and the model's own forward: same function as the reference math, any batch size."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import tiniest
from tiniest import Block, Tiniest
from tiniest.errors import UsageError
from tiniest.fast import compiled
from tiniest.fast.compiled import compiled_cache_dir, package_key, why_no_build
from tiniest.fast.optimized import (
    BUILD_MIN_IMAGES,
    CHUNK,
    FastTiniest,
    OptimizedTiniest,
    compiler_available,
    optimize,
    worth_building,
)


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
    optimized = optimize(model, mode="eager")
    assert isinstance(optimized, OptimizedTiniest) and not optimized.compiled and not optimized.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(TypeError):
        optimize(nn.Linear(2, 2))


def test_an_unknown_mode_is_refused_in_one_line() -> None:
    with pytest.raises(UsageError, match="mode must be one of compiled, cached, eager; got 'fast'"):
        optimize(random_model(), mode="fast")  # type: ignore[arg-type]


def test_no_compiler_means_the_eager_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINIEST_NO_COMPILE", "1")
    assert not compiler_available()
    assert not optimize(random_model()).compiled


@pytest.mark.slow
def test_compiled_package_serves_any_batch_size_and_is_built_once_per_machine(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if not compiler_available():
        pytest.skip("no C++ compiler: optimize() uses the eager fallback, tested above")
    monkeypatch.delenv("TINIEST_COMPILED_CACHE")  # this test's own, empty $TINIEST_CACHE/compiled
    model = random_model(seed=3)
    with caplog.at_level(logging.WARNING, logger="tiniest.fast.compiled"):
        optimized = optimize(model)
    assert optimized.compiled
    (notice,) = caplog.messages  # the build is announced, in one line, before the wait
    assert "compiling the fast model" in notice and "once per machine" in notice and "\n" not in notice
    assert str(compiled_cache_dir()) in notice
    caplog.clear()
    for batch in (*range(1, CHUNK + 1), 2 * CHUNK + 1, 70):  # every size a package serves, and splits
        x = inputs(batch, seed=batch)
        with torch.no_grad():
            torch.testing.assert_close(optimized(x), model(x), rtol=0, atol=1e-4)
    fast = FastTiniest(model)
    package, single = compiled._package_path(fast, CHUNK), compiled._package_path(fast, 1)
    records = [p.with_name(f"{p.name}.sha256") for p in (package, single)]
    assert sorted(p.name for p in compiled_cache_dir().iterdir() if p.name != ".locks") == sorted(
        p.name for p in (package, single, *records)
    ), "the two packages (batches, one picture) and their sha256 records, no leftovers"
    for built, record in zip((package, single), records, strict=True):
        assert record.read_text().strip() == hashlib.sha256(built.read_bytes()).hexdigest()
        modes = [stat.S_IMODE(p.stat().st_mode) for p in (compiled_cache_dir(), built, record)]
        assert modes == [0o700, 0o600, 0o600], "private to this user"
        with zipfile.ZipFile(built) as archive:
            (wrapper,) = [archive.read(name).decode() for name in archive.namelist() if name.endswith(".wrapper.cpp")]
        # Frozen weights: all 13 matmuls and 14 convolutions run oneDNN's prepacked kernels, none plain addmm.
        assert wrapper.count("_linear_pointwise(") == 13, "the build must freeze the weights (grad off)"
        assert wrapper.count("_convolution_pointwise(") == 14
        assert "addmm_out(" not in wrapper

    def no_build(*args: object) -> None:
        raise AssertionError("the cached package should have been loaded, not rebuilt")

    with monkeypatch.context() as patched, caplog.at_level(logging.WARNING, logger="tiniest.fast.compiled"):
        patched.setattr(compiled, "_build", no_build)
        again = optimize(model)  # as a new process would: from the cache
        assert optimize(model, mode="cached").compiled, "a package already built is used even for a few images"
    assert again.compiled and not caplog.messages, "loading is not announced"
    x = inputs(3)
    torch.testing.assert_close(again(x), optimized(x), rtol=0, atol=0)

    data = bytearray(package.read_bytes())  # 40 bytes changed (the made every picture 'cat 1.000')
    data[len(data) // 3 : len(data) // 3 + 40] = bytes(b ^ 0xFF for b in data[len(data) // 3 : len(data) // 3 + 40])
    package.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="not loading the compiled package .*: its sha256 is"):
        rebuilt = optimize(model)
    assert rebuilt.compiled
    torch.testing.assert_close(rebuilt(x), optimized(x), rtol=0, atol=0)
    assert compiled._load(package) is not None, "the damaged package was replaced by a good one"


def test_package_key_follows_the_weights_and_the_build() -> None:
    fast, other = FastTiniest(random_model(seed=0)), FastTiniest(random_model(seed=1))
    key = package_key(fast, CHUNK)
    assert key == package_key(FastTiniest(random_model(seed=0)), CHUNK)
    assert key != package_key(other, CHUNK)
    assert key != package_key(fast, CHUNK // 2)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert key == package_key(fast, CHUNK), "the loops take the thread count at run time: one package serves all"
    finally:
        torch.set_num_threads(threads)


def test_failed_build_means_the_eager_fallback_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    if not compiler_available():
        pytest.skip("no C++ compiler: optimize() never tries a build, tested above")
    if (reason := why_no_build()) is not None:
        pytest.skip(f"{reason}: optimize() never tries a build")
    def failing_build(module: nn.Module, chunk: int, target: Path) -> None:
        target.write_bytes(b"half a package")
        raise RuntimeError("the C++ compiler crashed")

    monkeypatch.delenv("TINIEST_COMPILED_CACHE")
    monkeypatch.setattr(compiled, "_build", failing_build)
    model = random_model()
    with pytest.warns(RuntimeWarning, match="the C\\+\\+ compiler crashed"):
        optimized = optimize(model, mode="compiled")
    assert not optimized.compiled
    x = inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(optimized(x), model(x), rtol=0, atol=1e-4)
    assert [p.name for p in compiled_cache_dir().iterdir()] == [".locks"], "no partial package is kept"


@pytest.mark.slow
def test_unusable_cache_still_gives_the_compiled_model_and_keeps_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if not compiler_available():
        pytest.skip("no C++ compiler: optimize() uses the eager fallback, tested above")
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file where the cache folder should be")
    monkeypatch.setenv("TINIEST_CACHE", str(not_a_folder))
    monkeypatch.delenv("TINIEST_COMPILED_CACHE")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    model = random_model(seed=5)
    with pytest.warns(RuntimeWarning, match="cannot write to the cache"):
        optimized = optimize(model)
    assert optimized.compiled
    x = inputs(4)
    with torch.no_grad():
        torch.testing.assert_close(optimized(x), model(x), rtol=0, atol=1e-4)
    assert not list(scratch.glob("tiniest-compiled-*")), "the temporary build folder is removed"


@pytest.mark.slow
def test_optimized_published_model_scores_9463_on_cifar10_test_as_the_plain_one_does(
    shared_checkpoint: Path, shared_cifar10: Path
) -> None:
    from tiniest.data import load_split

    model = tiniest.tiniest(weights=str(shared_checkpoint))
    optimized = optimize(model)
    test = load_split(shared_cifar10, "test")
    assert len(test.labels) == 10_000
    with torch.inference_mode():
        got = torch.cat([optimized(batch.float() / 255 - 0.5) for batch in test.images.split(500)])
        # the plain model on a fifth of the split (test_published_accuracy runs it on all of it)
        want = torch.cat([model(batch.float() / 255 - 0.5) for batch in test.images[:2000].split(500)])
    assert (got[:2000] - want).abs().max().item() <= 1e-4
    assert torch.equal(got[:2000].argmax(1), want.argmax(1))
    assert int((got.argmax(1) == test.labels).sum()) == 9463


def test_tiniest_optimize_stays_callable_after_the_submodule_is_imported() -> None:
    import tiniest.fast.optimized  # the module that defines optimize

    model = random_model()
    optimized = tiniest.optimize(model, mode="eager")
    x = inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(optimized(x), model(x), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_a_package_that_crashes_or_disagrees_is_neither_used_nor_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """A package compiled for one batch size only: other sizes corrupt memory or give wrong shapes."""
    if not compiler_available():
        pytest.skip("no C++ compiler: optimize() uses the eager fallback, tested above")
    monkeypatch.delenv("TINIEST_COMPILED_CACHE")  # this test's own, empty $TINIEST_CACHE/compiled

    def static_build(module: nn.Module, chunk: int, target: Path) -> None:
        import torch._inductor.config

        example = torch.zeros(chunk, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch._inductor.config.patch(freezing=True):
            program = torch.export.export(module, (example,))
            torch._inductor.aoti_compile_and_package(program, package_path=str(target))

    monkeypatch.setattr(compiled, "_build", static_build)
    with pytest.warns(RuntimeWarning, match="failed its check in a child process"):
        optimized = optimize(random_model(seed=5))
    assert not optimized.compiled
    assert not list(compiled_cache_dir().glob("*.pt2")), "nothing is cached"
    x = inputs(3)
    torch.testing.assert_close(optimized(x), random_model(seed=5)(x), rtol=0, atol=1e-4)


def test_a_few_images_never_wait_for_a_build(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Without a package for these weights, ``mode="cached"`` runs the folded module eagerly at once."""

    def no_build(*args: object) -> None:
        raise AssertionError("a run over a few images must not build the package")

    monkeypatch.delenv("TINIEST_COMPILED_CACHE")
    monkeypatch.setattr(compiled, "_build", no_build)
    model = random_model(seed=6)
    with caplog.at_level(logging.WARNING), warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning either: nothing was tried and failed
        optimized = optimize(model, mode="cached")
    assert not optimized.compiled and not caplog.messages
    assert not compiled_cache_dir().exists() or not list(compiled_cache_dir().glob("*.pt2"))
    x = inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(optimized(x), model(x), rtol=0, atol=1e-4)


def test_the_work_at_hand_decides_the_build() -> None:
    assert not worth_building(1) and not worth_building(200), "a picture, or issue 15's 200 images"
    assert worth_building(BUILD_MIN_IMAGES) and worth_building(10_000), "CIFAR-10's test split"


def test_predict_of_one_picture_builds_nothing(monkeypatch: pytest.MonkeyPatch, shared_checkpoint: Path) -> None:
    """The first ``tiniest predict`` of one picture on an empty cache answers without compiling (its mode: cached)."""
    from tiniest.inference import predict

    def no_build(*args: object) -> None:
        raise AssertionError("predict of one picture must not build the package")

    monkeypatch.delenv("TINIEST_COMPILED_CACHE")
    monkeypatch.setattr(compiled, "_build", no_build)
    picture = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # "no usable AOTInductor package" would be one
        (fast,) = predict(picture, weights=shared_checkpoint, top_k=3, fast="cached")
        (plain,) = predict(picture, weights=shared_checkpoint, top_k=3)
    assert [name for name, _ in fast.top] == [name for name, _ in plain.top]
    assert max(abs(a - b) for (_, a), (_, b) in zip(fast.top, plain.top, strict=True)) < 1e-5


def test_a_model_on_another_device_stays_there() -> None:
    """The fast path is CPU code: elsewhere ``optimize`` says so and keeps the model on its device.

    ``meta`` stands in for a GPU here: a device that is not the CPU, whose tensors cannot be copied
    to the CPU; before, ``optimize`` moved every model to the CPU, so a GPU model's first call
    failed on mismatched devices.
    """
    model = Tiniest().to("meta")
    with pytest.warns(UserWarning, match="CPU-only; the model stays on meta") as caught:
        optimized = optimize(model)
    assert caught[0].filename == __file__, "the warning points at the caller's line"
    assert not optimized.compiled
    assert {t.device.type for t in (*optimized.parameters(), *optimized.buffers())} == {"meta"}
    logits = optimized(torch.empty(20, 3, 32, 32, device="meta"))  # more than one chunk
    assert logits.shape == (20, 10) and logits.device.type == "meta"


def test_evaluate_of_a_small_folder_builds_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 15: ``evaluate --weights`` over a few images spent ~27 s building the fast model first."""
    pytest.importorskip("PIL")
    from tests.test_evaluation import tiny_folder
    from tiniest.commands import main

    def no_build(*args: object) -> None:
        raise AssertionError("evaluating 4 images must not build the package")

    monkeypatch.delenv("TINIEST_COMPILED_CACHE")
    monkeypatch.setattr(compiled, "_build", no_build)
    tiny_folder(tmp_path, ("cat", "ship"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert main(["evaluate", "--data", str(tmp_path), "--weights", str(shared_checkpoint), "--no-progress"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.endswith("4 images, tiniest.optimize's module run eagerly (not compiled)")


def test_looking_for_a_package_does_not_import_inductor(tmp_path: Path) -> None:
    """package_key asked Inductor's config whether the thread count is dynamic: a 2 s import on every
    load_cached, which open_package goes out of its way to avoid. Inductor is imported to build only."""
    script = """
import sys
from tiniest import Tiniest
from tiniest.fast.compiled import load_cached
from tiniest.fast.optimized import CHUNK, FastTiniest
assert load_cached(FastTiniest(Tiniest().eval()), CHUNK) is None, "an empty cache"
print(sorted(name for name in sys.modules if name.startswith("torch._inductor")))
"""
    environment = {**os.environ, "TINIEST_COMPILED_CACHE": str(tmp_path / "compiled")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_per_call_walk_finds_what_modules_finds() -> None:
    """``forward`` walks the tree itself (cheaper than ``modules()``): a shared module once, an emptied slot skipped."""
    from tiniest.fast.optimized import _walk

    model = optimize(random_model(), mode="eager")
    model.extra = nn.Sequential(model.fc, nn.ReLU())  # the classifier shared under a second name
    model.l1.register_module("gone", None)
    walked = _walk(model)
    assert len(walked) == len(set(map(id, walked))) == len(list(model.modules()))
    assert set(map(id, walked)) == set(map(id, model.modules()))


def test_weights_made_in_inference_mode_are_followed_too() -> None:
    """Inference tensors keep no version counter; the staleness check reads them as -1 instead of raising."""
    from tiniest.fast.optimized import _versions

    ordinary = torch.zeros(3)
    ordinary += 1
    with torch.inference_mode():
        frozen = torch.zeros(3)
    assert _versions([ordinary]) == [1]
    assert _versions([ordinary, frozen]) == [1, -1]
