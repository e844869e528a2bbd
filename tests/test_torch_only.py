"""torch alone is enough for torch.hub: ``hubconf.dependencies`` is ``["torch"]``, and it is true.

Each load runs ``torch.hub.load`` on a copy of the checkout (as torch.hub unpacks it) in a child of
the dev interpreter where every other package the project uses is unimportable: an import finder
placed first on ``sys.meta_path`` refuses safetensors, numpy, tqdm, PIL and huggingface_hub, and
records each attempt. Only tqdm (a progress bar where it is installed) and huggingface_hub (the Hub
source) may be tried, and their absence costs nothing but the bar and that one source. The bare
environments themselves (the oldest torch and Python, the newest) are built in CI.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import DEAD_ENDPOINT, copy_checkout
from tests.loopback import LoopbackServer, serve_like_the_hub
from tiniest.weights import TiniestWeights

RELEASE = TiniestWeights.DEFAULT.release
GITHUB_ROUTE = RELEASE.url.removeprefix("https://github.com")  # the release asset, under any mirror
HUB = RELEASE.where["huggingface"]
HUB_FILE = (HUB["repo_id"], HUB["revision"], HUB["filename"])
BLOCKED = ("safetensors", "numpy", "tqdm", "PIL", "huggingface_hub")
OPTIONAL = {"tqdm", "huggingface_hub", "safetensors"}  # tried, and done without (safetensors: the fallback reader)

CHILD = textwrap.dedent(
    """
    import hashlib, json, sys
    import torch, torch.hub

    BLOCKED = {blocked!r}
    tried = []

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                tried.append(name.split(".")[0])
                raise ImportError(f"No module named {{name!r}} (made unimportable by the test)")
            return None

    for name in [name for name in sys.modules if name.split(".")[0] in BLOCKED]:  # torch may have loaded numpy
        del sys.modules[name]
    sys.meta_path.insert(0, Refuse())
    checkout, kwargs = sys.argv[1], json.loads(sys.argv[2])
    out = {{"tried": tried}}
    try:
        model = torch.hub.load(checkout, "tiniest", source="local", trust_repo=True, **kwargs)
    except Exception as error:
        out["error"] = f"{{type(error).__name__}}: {{error}}"
    else:
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):  # what the model holds, without numpy
            digest.update(name.encode() + bytes(tensor.contiguous().view(-1).view(torch.uint8).tolist()))
        out["sha256"] = digest.hexdigest()
        out["code"] = sys.modules["tiniest"].__file__
    print(json.dumps(out))
    """
)


def tensors_digest(data: bytes) -> str:
    """The child's digest of a model's tensors (names and bytes), for the release file's tensors."""
    from tiniest.weights.formats import read_state_dict

    digest = hashlib.sha256()
    for name, tensor in sorted(read_state_dict(data).items()):
        digest.update(name.encode() + bytes(tensor.contiguous().view(-1).view(torch.uint8).tolist()))
    return digest.hexdigest()


def hub_load(checkout: Path, release: Path, env: dict[str, str], **kwargs: object) -> dict[str, object]:
    """``torch.hub.load(checkout, "tiniest", **kwargs)`` in a child with only torch to import."""
    unwanted = ("TINIEST_WEIGHTS", "TINIEST_WEIGHTS_DIR", "PYTHONPATH")
    base = {k: v for k, v in os.environ.items() if k not in unwanted}
    code = CHILD.format(blocked=BLOCKED)
    run = subprocess.run(
        [sys.executable, "-c", code, str(checkout), json.dumps(kwargs), str(release)],
        capture_output=True,
        text=True,
        cwd=checkout.parent,
        env={**base, **env},
        timeout=300,
    )
    assert run.returncode == 0 and run.stdout.strip(), run.stderr[-3000:]
    result: dict[str, object] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def test_hubconf_asks_for_torch_alone() -> None:
    import hubconf

    assert hubconf.dependencies == ["torch"]


@pytest.mark.parametrize("source", ["local", "cache", "github", "huggingface", "original", "file"])
@pytest.mark.slow
def test_torch_hub_load_with_only_torch_from_every_source(
    source: str, server: LoopbackServer, release_bytes: bytes, shared_checkpoint: Path, tmp_path: Path
) -> None:
    """Each source alone gives the published weights (sha256 of what the model holds); the Hub source, which
    needs huggingface_hub, is refused in one line naming it, and the chain goes on to the original .pt."""
    checkout = copy_checkout(tmp_path / "checkout")
    release = tmp_path / "release.safetensors"
    release.write_bytes(release_bytes)
    torch_home = tmp_path / "torch"
    env = {"TORCH_HOME": str(torch_home), "TINIEST_GITHUB_URL": server.url, "HF_ENDPOINT": DEAD_ENDPOINT}
    kwargs: dict[str, object] = {"sources": source, "progress": True}
    if source == "local":
        shutil.copy(release, checkout / "weights" / RELEASE.filename)
    elif source == "cache":
        (torch_home / "hub" / "checkpoints").mkdir(parents=True)
        shutil.copy(release, torch_home / "hub" / "checkpoints" / RELEASE.filename)
    elif source == "github":
        server.serve(GITHUB_ROUTE, release_bytes)
    elif source == "huggingface":
        serve_like_the_hub(server, *HUB_FILE, release_bytes)
        env["HF_ENDPOINT"] = server.url  # the Hub is up: only its client is missing
        server.serve(f"/{RELEASE.source_path}", shared_checkpoint.read_bytes())
        kwargs["sources"] = "huggingface,original"
    elif source == "original":
        server.serve(f"/{RELEASE.source_path}", shared_checkpoint.read_bytes())
    else:
        kwargs = {"weights": str(shared_checkpoint)}  # the publisher's .pt, by path
    out = hub_load(checkout, release, env, **kwargs)
    assert "error" not in out, out
    assert out["sha256"] == tensors_digest(release_bytes)
    assert Path(str(out["code"])).is_relative_to(checkout), "the checkout's code ran"
    assert set(out["tried"]) <= OPTIONAL, out["tried"]  # type: ignore[arg-type]
    if source == "huggingface":
        assert "huggingface_hub" in out["tried"]  # type: ignore[operator]
        fresh = {**env, "TORCH_HOME": str(tmp_path / "fresh-torch")}  # the first load cached the file
        refused = hub_load(checkout, release, fresh, sources="huggingface", progress=False)
        assert "huggingface: huggingface_hub cannot be imported" in str(refused["error"]), refused
