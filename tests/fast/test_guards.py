"""The optimized model against the plain one as the oracle: every input, every module operation, every environment.

The compiled package is native code built for ``(1..15, 3, 32, 32)`` float32 CPU tensors; anything
else reaching it corrupted memory (issue 19). Whatever could crash runs in a child process, which
must exit normally. One package (for ``SEED``'s weights) is built per session and shared.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import sysconfig
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest
import torch

from tests.fast.test_optimize import inputs, random_model
from tiniest.fast import compiled
from tiniest.fast.compiled import check_in_child, package_key
from tiniest.fast.optimized import CHUNK, FastTiniest, OptimizedTiniest, compiler_available, optimize

ROOT = Path(__file__).resolve().parents[2]
SEED = 11  # the weights of the shared package


def run_python(
    script: str, *, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter from the checkout; it must end normally (no signal, exit status 0)."""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert done.returncode == 0, f"exit status {done.returncode}:\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def compiled_model(compiled_packages: Path) -> Iterator[OptimizedTiniest]:
    """``optimize(random_model(SEED))`` with its package, built once into the session's package folder."""
    if not compiler_available():
        pytest.skip("no C++ compiler: no package to guard")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TINIEST_COMPILED_CACHE", str(compiled_packages))
        model = optimize(random_model(SEED))
    assert model.compiled
    yield model


# Each case: an expression for the input (``x`` is a valid batch of 4), run through both models in a child.
CASES = {
    "batch 1": "rand(1, 3, 32, 32)",
    "batch CHUNK": f"rand({CHUNK}, 3, 32, 32)",
    "batch CHUNK + 1": f"rand({CHUNK + 1}, 3, 32, 32)",
    "batch 37": "rand(37, 3, 32, 32)",
    "28x28 (a SIGSEGV)": "rand(16, 3, 28, 28)",
    "16x16 (a heap corruption)": "rand(16, 3, 16, 16)",
    "64x64 (wrong logits)": "rand(4, 3, 64, 64)",
    "33x17": "rand(2, 3, 33, 17)",
    "1x1": "rand(2, 3, 1, 1)",
    "empty batch": "rand(0, 3, 32, 32)",
    "4 channels": "rand(2, 4, 32, 32)",
    "unbatched": "rand(3, 32, 32)",
    "5 dimensions": "rand(1, 2, 3, 32, 32)",
    "uint8 0..255": "(rand(4, 3, 32, 32) * 255 + 128).to(torch.uint8)",
    "int64": "rand(2, 3, 32, 32).long()",
    "float16": "x.half()",
    "bfloat16": "x.bfloat16()",
    "float64": "x.double()",
    "complex64": "x.to(torch.complex64)",
    "channels_last": "x.contiguous(memory_format=torch.channels_last)",
    "transposed": "x.transpose(2, 3)",
    "strided window": "rand(4, 3, 40, 40)[:, :, 3:35:1, 5:37]",
    "every other image": "rand(8, 3, 32, 32)[::2]",
    "expanded": "x[:1].expand(6, 3, 32, 32)",
    "overlapping": "torch.as_strided(rand(3 * 32 * 32 + 64), (5, 3, 32, 32), (16, 1024, 32, 1))",
    "sparse": "x.to_sparse()",
    "meta": "x.to('meta')",
    "NaN and inf": "x.index_put_((torch.tensor([0]),), torch.tensor(float('nan'))).clamp(max=float('inf'))",
    "large values": "x * 1e4",
    "a list": "x.tolist()",
    "None": "None",
}

COMPARE = """
import json, sys, torch
from tests.fast.test_optimize import random_model
from tiniest.fast import optimize
plain = random_model(SEED)
fast = optimize(plain, mode="cached")
assert fast.compiled, "the shared package was not found"
generator = torch.Generator().manual_seed(0)
def rand(*shape):
    return torch.rand(*shape, generator=generator) - 0.5
x = rand(4, 3, 32, 32)
def outcome(model, value):
    try:
        with torch.no_grad():
            out = model(value)
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}"}
    if out.device.type == "meta":
        return {"meta": list(out.shape)}
    out[..., 0] = out[..., 0]  # an ordinary tensor, not an inference tensor
    return {"logits": out.tolist(), "dtype": str(out.dtype)}
results = {}
for name, expression in CASES.items():
    value = eval(expression)
    results[name] = [outcome(plain, value), outcome(fast, value)]
print(json.dumps(results))
"""


@pytest.mark.slow
def test_every_input_gets_the_plain_models_answer_or_error(compiled_model: OptimizedTiniest) -> None:
    script = f"SEED = {SEED}\nCASES = {CASES!r}\n{COMPARE}"
    results = json.loads(run_python(script).stdout.splitlines()[-1])
    worst = 0.0
    for name, (want, got) in results.items():
        if "logits" not in want:
            assert got == want, f"{name}: the plain model gives {want}, the optimized one {got}"
            continue
        assert "logits" in got and got["dtype"] == want["dtype"], f"{name}: {got}"
        plain, fast = torch.tensor(want["logits"]), torch.tensor(got["logits"])
        assert plain.shape == fast.shape, name
        finite = plain.isfinite()
        assert torch.equal(finite, fast.isfinite()), name
        if plain.numel():
            difference = (plain[finite] - fast[finite]).abs().max().item() if finite.any() else 0.0
            assert difference <= 1e-4, f"{name}: logits differ by {difference:.3g}"
            if finite.all():
                assert torch.equal(plain.argmax(-1), fast.argmax(-1)), name
            worst = max(worst, difference)
    print(f"largest |logit difference| over the inputs both models accept: {worst:.3g}")
    assert {"error"} <= set(results["uint8 0..255"][0]), "the plain model refuses uint8 (and so must this one)"


@pytest.mark.slow
def test_gradients_flow_through_the_plain_forward(compiled_model: OptimizedTiniest) -> None:
    plain = random_model(SEED)
    x = inputs(3).requires_grad_()
    compiled_model(x).logsumexp(1).sum().backward()
    assert x.grad is not None
    got, x.grad = x.grad, None
    plain(x).logsumexp(1).sum().backward()
    torch.testing.assert_close(got, x.grad, rtol=0, atol=1e-6)
    tuned = pickle.loads(pickle.dumps(compiled_model)).requires_grad_()  # fine-tuning the optimized model
    tuned(inputs(3)).logsumexp(1).sum().backward()
    plain.zero_grad()
    plain(inputs(3)).logsumexp(1).sum().backward()
    assert tuned.l2.fc1.weight.grad is not None and plain.l2.fc1.weight.grad is not None
    torch.testing.assert_close(tuned.l2.fc1.weight.grad, plain.l2.fc1.weight.grad, rtol=0, atol=1e-6)


def test_outputs_are_ordinary_tensors(compiled_model: OptimizedTiniest) -> None:
    out = compiled_model(inputs(2))
    assert not out.is_inference() and not out.requires_grad
    out[0] = 0  # raised "Inplace update to inference tensor outside InferenceMode"
    assert torch.equal(out[0], torch.zeros(10))


@pytest.mark.slow
def test_load_state_dict_changes_what_runs(compiled_model: OptimizedTiniest) -> None:
    model = pickle.loads(pickle.dumps(compiled_model))  # a copy: the fixture stays as built
    other = random_model(SEED + 1)
    assert set(model.state_dict()) == set(other.state_dict()), "the plain model's keys"
    model.load_state_dict(other.state_dict())
    x = inputs(5)
    with torch.no_grad():
        torch.testing.assert_close(model(x), other(x), rtol=0, atol=1e-4)
        assert not model.compiled, "no package exists for the new weights: the folded module runs eagerly"
        model.fc.bias += 1  # an in-place change counts as well
        torch.testing.assert_close(model(x), other(x) + 1, rtol=0, atol=1e-4)
        model.load_state_dict(random_model(SEED).state_dict())
        assert model.compiled, "back to the weights of the package: it is used again"
        torch.testing.assert_close(model(x), compiled_model(x), rtol=0, atol=0)


def _logits(model: OptimizedTiniest, x: torch.Tensor) -> tuple[bool, torch.Tensor]:
    """Run in a spawned worker: the model arrived pickled."""
    with torch.no_grad():
        return model.compiled, model(x)


@pytest.mark.slow
def test_pickles_and_runs_in_a_spawned_worker(compiled_model: OptimizedTiniest) -> None:
    x = inputs(4)
    copy = pickle.loads(pickle.dumps(compiled_model))
    assert copy.compiled, "rebuilt from its weights, with the package already built for them"
    with torch.no_grad():
        torch.testing.assert_close(copy(x), compiled_model(x), rtol=0, atol=0)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        was_compiled, logits = pool.submit(_logits, compiled_model, x).result(timeout=300)
    assert was_compiled
    with torch.no_grad():
        torch.testing.assert_close(logits, compiled_model(x), rtol=0, atol=1e-6)


def test_follows_the_module_to_another_device_or_dtype(compiled_model: OptimizedTiniest) -> None:
    model = pickle.loads(pickle.dumps(compiled_model))
    plain = random_model(SEED)
    x = inputs(3)
    model.to("meta")
    plain_meta = random_model(SEED).to("meta")
    with pytest.raises(RuntimeError) as want:
        plain_meta(x)
    with pytest.raises(RuntimeError) as got:  # CPU inputs computed on the CPU package before
        model(x)
    assert str(got.value) == str(want.value)
    assert not model.compiled
    assert model(x.to("meta")).shape == (3, 10)
    model = pickle.loads(pickle.dumps(compiled_model)).double()
    with torch.no_grad():
        torch.testing.assert_close(model(x.double()), plain.double()(x.double()), rtol=0, atol=1e-10)
        with pytest.raises(RuntimeError, match="should be the same"):
            model(x)  # float32 input into a float64 model, refused as the plain model refuses it


def test_forward_hooks_see_the_layers(compiled_model: OptimizedTiniest) -> None:
    """A recorder of activations (scio's Recorder) hooks the layers: they run, with the plain model's values."""

    def recorded(model: torch.nn.Module) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []
        handle = model.l5.register_forward_hook(lambda module, args, out: seen.append(out))
        try:
            with torch.no_grad():
                model(inputs(2))
        finally:
            handle.remove()
        return seen

    (got,), (want,) = recorded(compiled_model), recorded(random_model(SEED))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_threads_calling_first_remake_the_fast_path_once(
    compiled_model: OptimizedTiniest, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = pickle.loads(pickle.dumps(compiled_model))
    made: list[int] = []
    original = OptimizedTiniest._make_path

    def counted(self: OptimizedTiniest, tensors: list[torch.Tensor]) -> object:
        made.append(threading.get_ident())
        return original(self, tensors)

    monkeypatch.setattr(OptimizedTiniest, "_make_path", counted)
    start = threading.Barrier(4)
    results: list[torch.Tensor] = []

    def call() -> None:
        start.wait()
        with torch.no_grad():
            results.append(model(inputs(2)))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1 and len(results) == 4
    assert all(torch.equal(r, results[0]) for r in results)


def test_no_numpy_needed(compiled_model: OptimizedTiniest) -> None:
    """Issue 18: without numpy the cache key failed, and the package was never used."""
    key = package_key(FastTiniest(random_model(SEED)), CHUNK)
    script = f"""
import sys, warnings
sys.modules["numpy"] = None  # unimportable
from tests.fast.test_optimize import random_model
from tiniest.fast import FastTiniest, optimize
from tiniest.fast.compiled import package_key
warnings.simplefilter("error")  # after torch's own warning that numpy is missing
model = optimize(random_model({SEED}), mode="cached")
assert model.compiled, "the package built for these weights must load"
print(package_key(FastTiniest(random_model({SEED})), {CHUNK}))
"""
    assert run_python(script).stdout.split()[-1] == key


def test_one_package_under_any_thread_count(compiled_model: OptimizedTiniest) -> None:
    """Issue 18: ``torch.set_num_threads(1)`` (a server's or a worker pool's setting) silently lost the package."""
    threads = torch.get_num_threads()
    try:
        for count in {1, threads + 1}:
            torch.set_num_threads(count)
            model = optimize(random_model(SEED), mode="cached")
            assert model.compiled
            x = inputs(CHUNK + 3)
            with torch.no_grad():
                torch.testing.assert_close(model(x), random_model(SEED)(x), rtol=0, atol=1e-4)
    finally:
        torch.set_num_threads(threads)


UNCOMPILED = """
import logging, sys, warnings
warnings.simplefilter("always")
PREPARE
from tests.fast.test_optimize import random_model
from tiniest.fast import optimize
model = optimize(random_model(4))
assert not model.compiled
"""


def _stderr_lines(prepare: str, env: dict[str, str]) -> list[str]:
    done = run_python(UNCOMPILED.replace("PREPARE", prepare), env=env)
    return [line for line in done.stderr.splitlines() if "tiniest.optimize" in line or "compiling the fast" in line]


@pytest.mark.slow
def test_a_torch_that_cannot_build_says_so_in_one_line_and_announces_nothing(tmp_path: Path) -> None:
    """Issue 18: on torch 2.3 a build was announced ("about 30 s"), then failed on a missing function."""
    if not compiler_available():
        pytest.skip("no C++ compiler: that reason comes first")
    env = {**os.environ, "TINIEST_COMPILED_CACHE": str(tmp_path)}
    lines = _stderr_lines("import torch._inductor\ndel torch._inductor.aoti_compile_and_package", env)
    assert len(lines) == 1, lines
    assert "running uncompiled" in lines[0] and f"torch {torch.__version__} cannot build" in lines[0]
    assert not any(tmp_path.glob("*.pt2"))


def test_no_compiler_says_so_in_one_line_and_announces_nothing(tmp_path: Path) -> None:
    """``$CXX`` is the compiler Inductor uses: a missing one is no compiler, whatever else is on the PATH."""
    env = {**os.environ, "TINIEST_COMPILED_CACHE": str(tmp_path), "CXX": str(tmp_path / "nonexistent")}
    lines = _stderr_lines("", env)
    assert len(lines) == 1, lines
    assert "no C++ compiler" in lines[0] and "compiling" not in lines[0]


def test_the_package_check_ignores_a_tiniest_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 19: ``python -m`` put the working directory first, so a planted ``tiniest/`` ran and faked the check.

    Besides a fake ``tiniest``, each place gets what an interpreter that is not isolated runs from it:
    ``typing_extensions`` (which torch imports) from the working directory, ``sitecustomize`` from
    ``PYTHONPATH``, ``usercustomize`` from the user's site packages (``$PYTHONUSERBASE/lib/pythonX.Y/
    site-packages``; an interpreter in a venv reads none). Each writes a marker and ends the child
    with status 0, which the check would take for a pass.
    """
    user_site = sysconfig.get_path("purelib", sysconfig.get_preferred_scheme("user"), vars={"userbase": "USERBASE"})
    folders = {
        "cwd": (tmp_path / "cwd", "typing_extensions.py"),
        "pythonpath": (tmp_path / "pythonpath", "sitecustomize.py"),
        "usersite": (tmp_path / "userbase" / Path(user_site).relative_to("USERBASE"), "usercustomize.py"),
    }
    planted = []
    for place, (folder, hook) in folders.items():
        marker = tmp_path / f"ran-from-{place}"
        fake = folder / "tiniest"
        (fake / "fast").mkdir(parents=True)
        code = f"open({str(marker)!r}, 'w').close()\nraise SystemExit(0)\n"
        for name in ("__init__.py", "fast/__init__.py", "fast/_package_check.py"):
            (fake / name).write_text(code)
        (folder / hook).write_text(code)
        planted.append(marker)
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "pythonpath"))
    monkeypatch.setenv("PYTHONUSERBASE", str(tmp_path / "userbase"))
    package = tmp_path / "bad.pt2"
    package.write_bytes(b"not a package")
    with pytest.raises(RuntimeError, match="failed its check"):
        check_in_child(package, FastTiniest(random_model()), 2)
    assert not [marker.name for marker in planted if marker.exists()]


def test_compiler_detection_follows_inductor(tmp_path: Path) -> None:
    import torch._inductor.config as config

    # config.patch, not monkeypatch: undoing a monkeypatch deletes the setting from torch's config module
    with config.patch({"cpp.cxx": (None, str(tmp_path / "nonexistent"))}):
        assert compiled.find_compiler() == "" and not compiler_available()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not optimize(random_model()).compiled
    assert [str(w.message) for w in caught if "no C++ compiler" in str(w.message)]
    assert compiled.find_compiler(), "the setting is back"
