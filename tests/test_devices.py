"""``tiniest.devices.resolve_device``: a device this machine has, or one line naming what it has."""

from __future__ import annotations

import pytest
import torch

from tiniest.devices import available_devices, resolve_device
from tiniest.errors import UsageError

CUDA_HERE = torch.cuda.device_count() if torch.cuda.is_available() else 0
MISSING = f"cuda:{CUDA_HERE}"  # one CUDA device more than this machine has, with or without a GPU
FORMS = "expected cpu, cuda, cuda:N, mps, xpu or xpu:N"


def refusal(device: object) -> str:
    with pytest.raises(UsageError) as caught:
        resolve_device(device)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message, "one line"
    assert isinstance(caught.value, ValueError), "caught as any bad argument is"
    return message


def test_the_devices_here_are_accepted_as_names_or_torch_devices() -> None:
    here = available_devices()
    assert here[0] == "cpu" and len(here) == len(set(here))
    assert resolve_device(None) == torch.device("cpu"), "the default, as for torch"
    for name in here:
        assert resolve_device(name) == torch.device(name)
        assert resolve_device(torch.device(name)) == torch.device(name)
    assert resolve_device("cpu:0") == torch.device("cpu:0")
    assert [name for name in here if name.startswith("cuda")] == [f"cuda:{i}" for i in range(CUDA_HERE)]


def test_a_device_this_machine_lacks_names_itself_and_what_is_available() -> None:
    available = f"available: {', '.join(available_devices())}"
    for asked in (MISSING, torch.device(MISSING)):
        message = refusal(asked)
        assert message.startswith(f"device '{MISSING}' is not available: ") and message.endswith(f"; {available}")
    if CUDA_HERE:
        listed = ", ".join(f"cuda:{i}" for i in range(CUDA_HERE))
        assert f"{CUDA_HERE} CUDA device{'' if CUDA_HERE == 1 else 's'} ({listed})" in refusal(MISSING)
    elif torch.version.cuda is None and torch.version.hip is None:
        assert refusal("cuda") == (
            f"device 'cuda' is not available: this torch ({torch.__version__}) was built without CUDA; {available}"
        )
    if not torch.backends.mps.is_available():
        assert refusal("mps").startswith("device 'mps' is not available: ")
    if "xpu:0" not in available_devices():
        assert refusal("xpu").startswith("device 'xpu' is not available: ")


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:x", "cuda:-1", "", " cpu"])
def test_a_malformed_name_gets_the_accepted_forms(name: str) -> None:
    available = ", ".join(available_devices())
    assert refusal(name) == f"device {name!r} is not a device name: {FORMS}; available: {available}"


@pytest.mark.parametrize("name", ["meta", "hpu", "xla"])
def test_a_device_that_holds_no_data_or_that_tiniest_does_not_run_on_is_refused(name: str) -> None:
    assert refusal(name).startswith(f"device {name!r} is not one tiniest runs on: {FORMS}; available: cpu")


@pytest.mark.parametrize("value", [0, 1.5, b"cpu"])
def test_what_is_not_a_name_is_refused(value: object) -> None:
    assert refusal(value).startswith(f"expected a device name such as 'cpu' or 'cuda:0', got {type(value).__name__}")
