"""``tiniest.predict`` and ``tiniest predict`` on real CIFAR-10 test pictures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tiniest
from tiniest.commands import main
from tiniest.errors import PreprocessError
from tiniest.inference import Prediction, predict
from tiniest.weights import CLASSES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def pictures(shared_cifar10: Path) -> list[tuple[Path, str]]:
    """The first two test pictures of every class, with their true class."""
    return [(path, name) for name in CLASSES for path in sorted((shared_cifar10 / "test" / name).glob("*.png"))[:2]]


@pytest.fixture
def model(shared_checkpoint: Path) -> tiniest.Tiniest:
    return tiniest.tiniest(weights=str(shared_checkpoint))


def test_predict_takes_every_input_kind_and_matches_the_model(
    pictures: list[tuple[Path, str]], model: tiniest.Tiniest
) -> None:
    paths = [path for path, _ in pictures]
    arrays = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    by_path = predict(paths, model=model, top_k=3)
    assert len(by_path) == 20 and all(isinstance(p, Prediction) for p in by_path)
    correct = sum(p.label == truth for p, (_, truth) in zip(by_path, pictures, strict=True))
    assert correct >= 16, f"{correct}/20 right; the model is 94.6% accurate"

    with torch.no_grad():
        expected = torch.softmax(model(tiniest.preprocess(paths)), dim=1)
    for prediction, row in zip(by_path, expected, strict=True):
        top = row.topk(3)
        assert [name for name, _ in prediction.top] == [CLASSES[i] for i in top.indices.tolist()]
        assert np.allclose([p for _, p in prediction.top], top.values.tolist(), atol=1e-6)
        assert prediction.top[0][1] >= prediction.top[1][1] >= prediction.top[2][1]

    others = {
        "PIL": [Image.open(path) for path in paths],
        "numpy batch": np.stack(arrays),
        "tensor batch": torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2),
        "float tensor": torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255,
    }
    for name, value in others.items():
        result = predict(value, model=model, top_k=3)
        for a, b in zip(result, by_path, strict=True):
            assert [n for n, _ in a.top] == [n for n, _ in b.top], name
            assert np.allclose([p for _, p in a.top], [p for _, p in b.top], atol=1e-6), name

    single = predict(arrays[0], model=model, top_k=10)
    assert len(single) == 1 and abs(sum(p for _, p in single[0].top) - 1) < 1e-5
    with pytest.raises(ValueError, match=r"top_k between 1 and 10 .*got 11"):
        predict(arrays[0], model=model, top_k=11)


def test_default_model_is_the_plain_one_built_nothing_kept_unless_asked(
    pictures: list[tuple[Path, str]], model: tiniest.Tiniest, shared_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library's predict builds no native code and keeps no model: ``fast=`` asks for tiniest.optimize."""
    import tiniest.fast

    paths = [path for path, _ in pictures]
    asked: list[str] = []
    real = tiniest.fast.optimize
    monkeypatch.setattr(tiniest.fast, "optimize", lambda m, mode: asked.append(mode) or real(m, mode="eager"))
    fast = predict(paths, weights=shared_checkpoint, top_k=2)
    assert asked == [], "no optimize, no build, unasked"
    eager = predict(paths, weights=shared_checkpoint, top_k=2, fast="compiled")
    assert asked == ["compiled"]
    plain = predict(paths, model=model, top_k=2)
    for a, b, c in zip(fast, eager, plain, strict=True):
        assert a.label == b.label == c.label
        assert a.top == c.top and abs(b.probability - c.probability) < 1e-4, "plain by default; folded when asked"


@pytest.mark.slow
def test_cli_prints_text_and_json(pictures: list[tuple[Path, str]], shared_checkpoint: Path) -> None:
    paths = [str(path) for path, _ in pictures[:3]]
    env = {**os.environ, "TINIEST_WEIGHTS": str(shared_checkpoint)}
    command = [sys.executable, "-m", "tiniest", "predict", *paths, "--eager"]  # the optimized default: see above
    done = subprocess.run([*command, "--top-k", "3", "--json"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    expected = predict(paths, weights=shared_checkpoint, top_k=3)
    assert [r["image"] for r in records] == paths
    for record, prediction in zip(records, expected, strict=True):
        assert [(p["label"], round(p["probability"], 5)) for p in record["predictions"]] == [
            (name, round(p, 5)) for name, p in prediction.top
        ]

    text = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == [
        f"{path}: {p.label} {p.probability:.3f}" for path, p in zip(paths, expected, strict=True)
    ]


def test_cli_rejects_what_is_not_an_image(
    tmp_path: Path, shared_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TINIEST_WEIGHTS", str(shared_checkpoint))
    notes = tmp_path / "notes.png"
    notes.write_text("hello")
    assert main(["predict", str(notes)]) == 1
    assert "tiniest predict: error: cannot read image file" in capsys.readouterr().err
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    assert main(["predict", str(tmp_path / "ok.png"), "--top-k", "0"]) == 1
    assert "expected top_k between 1 and 10, got 0" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "ok.png"), "--top-k", "10"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 11


def test_tiniest_predict_stays_callable_however_it_was_imported() -> None:
    """A fresh process: the lazy attribute first, then the submodule import that replaces it."""
    script = """
import numpy as np, tiniest
model, image = tiniest.Tiniest().eval(), np.zeros((32, 32, 3), dtype=np.uint8)
first = tiniest.predict(image, model=model, top_k=2)
again = tiniest.predict(image, model=model, top_k=2)  # the package attribute is the module by now
import tiniest.inference
assert tiniest.predict(image, model=model, top_k=2) == again == first
assert tiniest.optimize(model, mode="eager") is not None
import tiniest.fast.optimized
assert tiniest.optimize(model, mode="eager") is not None
print(first[0].label)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in CLASSES


def test_one_unreadable_file_costs_only_its_own_answer(
    tmp_path: Path, shared_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(4)
    good_a, empty, good_b = tmp_path / "a.jpg", tmp_path / "empty.png", tmp_path / "b.png"
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(good_a)
    empty.write_bytes(b"")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(good_b)
    paths = [str(good_a), str(empty), str(good_b)]
    model = tiniest.tiniest(weights=str(shared_checkpoint))
    expected = predict([good_a, good_b], model=model)

    # Python: errors="report" keeps every answer in its place; the default raises at the bad file.
    results = predict(paths, model=model, errors="report")
    assert [r.error is None for r in results] == [True, False, True]
    assert [results[0], results[2]] == expected
    assert "cannot read image file" in str(results[1].error) and "empty.png" in str(results[1].error)
    assert results[1].top == ()
    with pytest.raises(ValueError, match="no prediction: cannot read image file"):
        _ = results[1].label
    with pytest.raises(PreprocessError, match=r"cannot read image file .*empty\.png"):
        predict(paths, model=model)
    with pytest.raises(ValueError, match="errors='raise' or 'report', got 'skip'"):
        predict(paths, model=model, errors="skip")  # type: ignore[arg-type]
    batch = np.zeros((2, 32, 32, 3), np.uint8)
    mixed = predict([batch, np.zeros((32, 32, 2), np.uint8), good_b], model=model, errors="report")
    assert [r.error is None for r in mixed] == [True, True, False, True], "one answer per image, one error per input"

    # The command line: answers on stdout, one error line per bad file on stderr, exit status 1.
    monkeypatch.setenv("TINIEST_WEIGHTS", str(shared_checkpoint))
    assert main(["predict", *paths, "--eager"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"{paths[0]}: {expected[0].label} {expected[0].probability:.3f}",
        f"{paths[2]}: {expected[1].label} {expected[1].probability:.3f}",
    ]
    assert captured.err.splitlines() == [f"tiniest predict: error: {results[1].error}"]
    assert main(["predict", *paths, "--eager", "--json", "--top-k", "2"]) == 1
    captured = capsys.readouterr()
    records = json.loads(captured.out)
    assert [r["image"] for r in records] == paths
    assert records[1] == {"image": paths[1], "error": results[1].error}
    assert [p["label"] for p in records[2]["predictions"]] == [
        name for name, _ in predict(good_b, model=model, top_k=2)[0].top
    ]
    assert len(captured.err.splitlines()) == 1


def test_without_pillow_predict_says_which_extra_in_one_line(tmp_path: Path) -> None:
    script = (
        "import sys; sys.modules['PIL'] = None\n"
        "from tiniest.commands import main\nsys.exit(main(['predict', 'cat.jpg']))"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "tiniest[images]"' in lines[0], done.stderr


CUDA_HERE = torch.cuda.device_count() if torch.cuda.is_available() else 0
MISSING = "cuda" if not CUDA_HERE else f"cuda:{CUDA_HERE}"  # a device this machine lacks
needs_cuda = pytest.mark.skipif(not CUDA_HERE, reason="no CUDA device here (torch.cuda.is_available() is False)")


def small_batch(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))


def test_predict_runs_on_the_device_asked_for_and_answers_on_the_cpu(
    model: tiniest.Tiniest, shared_checkpoint: Path
) -> None:
    x = small_batch()
    expected = predict(x, model=model, top_k=3)
    assert predict(x, model=model, top_k=3, device="cpu") == expected
    assert predict(x, model=model, top_k=3, device=torch.device("cpu")) == expected
    assert predict(x, weights=shared_checkpoint, top_k=3, device="cpu") == expected
    assert next(model.parameters()).device == torch.device("cpu")


def test_a_device_this_machine_lacks_is_refused_before_any_input_is_read(model: tiniest.Tiniest) -> None:
    for device, says in ((MISSING, "is not available: "), ("gpu", "is not a device name: "), ("meta", "is not one")):
        with pytest.raises(ValueError, match=r"^device '.*' " + says) as caught:
            predict("no-such-picture.png", model=model, device=device)
        assert isinstance(caught.value, tiniest.errors.UsageError) and "available: cpu" in str(caught.value)
        with pytest.raises(tiniest.errors.UsageError, match=says):
            predict(small_batch(), device=device)  # the default model: not loaded either
    assert next(model.parameters()).device == torch.device("cpu"), "the model stays where it was"


@needs_cuda
def test_on_cuda_the_plain_model_gives_the_cpu_answers(
    model: tiniest.Tiniest, shared_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    x = small_batch(5)
    expected = predict(x, model=model, top_k=3)
    with caplog.at_level("WARNING", logger="tiniest.inference"):
        answers = [
            predict(x, weights=shared_checkpoint, top_k=3, device="cuda", fast=fast) for fast in (None, "cached")
        ]
    said = [r.getMessage() for r in caplog.records if "CPU-only" in r.getMessage()]
    assert said == ["tiniest.predict: the fast path (tiniest.optimize) is CPU-only; on cuda the plain model runs"]
    mine = predict(x, model=model, top_k=3, device="cuda:0")
    assert next(model.parameters()).device == torch.device("cuda:0"), "a model given goes to the device"
    for got in (*answers, mine):
        for a, b in zip(got, expected, strict=True):
            assert [n for n, _ in a.top] == [n for n, _ in b.top]
            assert np.allclose([p for _, p in a.top], [p for _, p in b.top], atol=1e-4)


def test_bytes_and_binary_files_are_read_as_their_paths(
    pictures: list[tuple[Path, str]], model: tiniest.Tiniest, tmp_path: Path
) -> None:
    """A service's upload (bytes, io.BytesIO, a spooled temporary file) answers as the file it came from."""
    import io
    import tempfile

    photo = tmp_path / "photo.jpg"  # a JPEG larger than 64x64: decoded at reduced scale from a path
    Image.open(pictures[0][0]).resize((300, 200)).save(photo, quality=90)
    for path in (pictures[1][0], photo):
        expected = predict(path, model=model, top_k=3)
        data = path.read_bytes()
        with path.open("rb") as opened, tempfile.SpooledTemporaryFile() as spooled:
            spooled.write(data)  # left at its end: read from the start all the same
            given = [data, bytearray(data), memoryview(data), io.BytesIO(data), opened, spooled]
            for value in given:
                assert predict(value, model=model, top_k=3) == expected, type(value).__name__
            together = predict(given, model=model, top_k=3)  # one batch: the same classes, floats within rounding
            assert [[n for n, _ in p.top] for p in together] == [[n for n, _ in expected[0].top]] * len(given)
            assert not opened.closed and not spooled.closed, "the caller's files stay open"
        torch.testing.assert_close(tiniest.preprocess(data), tiniest.preprocess(path), rtol=0, atol=0)

    with pytest.raises(PreprocessError, match=r"cannot read image bytes \(5 bytes\): expected a readable image"):
        predict(b"hello", model=model)
    with (tmp_path / "text.png").open("w") as text, pytest.raises(PreprocessError, match="expected a binary file"):
        predict(text, model=model)  # type: ignore[arg-type]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
@pytest.mark.slow
def test_a_large_jpeg_as_bytes_costs_what_its_path_costs(tmp_path: Path) -> None:
    """Issue 20: a 4000x3000 upload decoded at full size took a server from 268 MB to 503 MB.

    The peak resident memory (VmHWM), reset just before predict: decoded in full, this photo adds ~80 MB.
    """
    photo = tmp_path / "photo.jpg"
    gradient = Image.linear_gradient("L").resize((4000, 3000))
    mirrored = gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    Image.merge("RGB", (gradient, mirrored, gradient)).save(photo, quality=85)
    script = """
import io, sys
from pathlib import Path
from PIL import Image
import tiniest
model, path = tiniest.tiniest(weights=None), Path(sys.argv[1])
given = path.read_bytes() if sys.argv[2] == "bytes" else path
small = io.BytesIO()
Image.new("RGB", (64, 64)).save(small, "JPEG")
tiniest.predict(small.getvalue(), model=model)  # every import done before the measure
def peak_kilobytes():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
Path("/proc/self/clear_refs").write_text("5")  # the peak is now the current size
before = peak_kilobytes()
answer = tiniest.predict(given, model=model)
print(peak_kilobytes() - before, answer[0].label)
"""
    grown = {}
    for kind in ("path", "bytes"):
        done = subprocess.run(
            [sys.executable, "-c", script, str(photo), kind], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        kilobytes, label = done.stdout.split()
        grown[kind] = int(kilobytes) / 1024
        assert label in CLASSES
    assert grown["bytes"] < grown["path"] + 20 and grown["bytes"] < 40, f"peak memory grew by {grown} MB"


def test_weights_takes_what_tiniest_takes(model: tiniest.Tiniest, shared_checkpoint: Path) -> None:
    x = small_batch()
    expected = predict(x, model=model, top_k=3)
    for weights in (shared_checkpoint, str(shared_checkpoint)):
        assert predict(x, weights=weights, top_k=3) == expected
    with pytest.raises(tiniest.errors.UsageError, match=r"^predict\(weights=None\): expected weights .*got None"):
        predict(x, weights=None)  # type: ignore[arg-type]


def test_weights_by_release_member_or_name(monkeypatch: pytest.MonkeyPatch, shared_checkpoint: Path) -> None:
    """TINIEST_WEIGHTS applies where weights are left out, as in tiniest(); a member passed wins."""
    monkeypatch.setenv("TINIEST_WEIGHTS", str(shared_checkpoint))
    x = small_batch()
    expected = predict(x, model=tiniest.tiniest(weights=shared_checkpoint), top_k=2)
    assert predict(x, top_k=2) == expected
    monkeypatch.setenv("TINIEST_WEIGHTS", "no-such-weights.safetensors")
    monkeypatch.setenv("TINIEST_WEIGHTS_DIR", str(shared_checkpoint.parent))  # the release, found locally
    assert predict(x, weights=tiniest.TiniestWeights.DEFAULT, top_k=2) == expected, "weights passed win"
    with pytest.raises(tiniest.WeightsNotFoundError, match="no-such-weights"):
        predict(x, top_k=2)


def test_a_weights_file_written_again_or_named_from_elsewhere_is_loaded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default model was cached on the path's text: a file exported again, or ``w.pt`` after a
    ``chdir``, was answered by the model first loaded under that name."""
    x = small_batch()

    def write(path: Path, seed: int) -> list[Prediction]:
        torch.manual_seed(seed)
        made = tiniest.tiniest(weights=None)
        path.parent.mkdir(exist_ok=True)
        torch.save(made.state_dict(), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)  # as an export does: a new file in place of the old
        return predict(x, model=made, top_k=3)

    monkeypatch.chdir(tmp_path)
    first = write(tmp_path / "w.pt", 1)
    with pytest.warns(tiniest.errors.UnverifiedWeightsWarning):
        assert predict(x, weights="w.pt", top_k=3) == first
    second = write(tmp_path / "w.pt", 2)
    assert second != first
    with pytest.warns(tiniest.errors.UnverifiedWeightsWarning):
        assert predict(x, weights="w.pt", top_k=3) == second, "the file's new bytes"
    third = write(tmp_path / "elsewhere" / "w.pt", 3)
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.warns(tiniest.errors.UnverifiedWeightsWarning):
        assert predict(x, weights="w.pt", top_k=3) == third, "the file the name means here"
    with pytest.warns(tiniest.errors.UnverifiedWeightsWarning):
        assert predict(x, weights="w.pt", top_k=3) == third, "loaded for each call: nothing kept"


@pytest.mark.parametrize(
    "policy",
    [
        {"size": [16, 16], "interpolation": "bicubic", "antialias": False, "mean": [0.4, 0.5, 0.6],
         "std": [0.25, 0.5, 1.0], "color": "RGB"},
        {"size": [24, 20], "interpolation": "bilinear", "antialias": True, "mean": [0.25] * 3, "std": [1.0] * 3,
         "color": "RGB"},
    ],
)
def test_predict_and_evaluate_apply_the_weights_own_contract(policy: dict[str, object], tmp_path: Path) -> None:
    """A model whose metadata states another size and normalization is fed exactly that, not the default."""
    from tiniest.data import LabeledImages
    from tiniest.transforms import Preprocess

    model = tiniest.Tiniest(meta={"preprocessing": policy}).eval()
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    pixels = np.random.default_rng(5).integers(0, 256, (2, 40, 36, 3), dtype=np.uint8)
    expected = Preprocess.from_meta(policy)(pixels)
    assert expected.shape[2:] != (32, 32)

    predict(pixels, model=model)
    torch.testing.assert_close(seen.pop(), expected, rtol=0, atol=0)

    images = torch.from_numpy(pixels[:, :32, :32]).permute(0, 3, 1, 2).contiguous()
    evaluate_data = LabeledImages(images, torch.tensor([0, 1]), tiniest.CLASSES)
    tiniest.evaluate(model, evaluate_data)
    torch.testing.assert_close(seen.pop(), Preprocess.from_meta(policy)(images), rtol=0, atol=0)

    from tiniest.weights.artifact import artifact_metadata, to_safetensors

    path = tmp_path / "other.safetensors"  # weights named by a file: read as its metadata says, once loaded
    meta = {"categories": list(tiniest.CLASSES), "preprocessing": policy}
    path.write_bytes(to_safetensors(model.state_dict(), artifact_metadata(meta, source_sha256="")))
    with pytest.warns(tiniest.errors.UnverifiedWeightsWarning):
        answers = predict(pixels, weights=path, top_k=10)
    with torch.no_grad():
        wanted = torch.softmax(model(expected), dim=1)
    for answer, row in zip(answers, wanted, strict=True):
        probabilities = dict(answer.top)
        assert np.allclose([probabilities[name] for name in tiniest.CLASSES], row.tolist(), atol=1e-6)
