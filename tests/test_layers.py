"""``tiniest.layer``: the model card's layer indices and names lead to the modules the card describes."""

from __future__ import annotations

import pytest
import torch

import tiniest
from tests.test_model import table_rows
from tiniest.errors import UsageError
from tiniest.layers import layer_name


def own_params(module: torch.nn.Module) -> int:
    """What torchinfo's "Param #" shows for a module: its own parameters, not its children's."""
    return sum(param.numel() for param in module.parameters(recurse=False))


def test_every_row_of_the_card_is_a_module_of_its_type_and_size(model_card: str) -> None:
    model = tiniest.Tiniest()
    rows = [row for row in table_rows(model_card) if ":" in row[0]]  # the model's own row has no index
    assert len(rows) == 62
    for kind_index, *_, params, _percent in rows:
        kind, index = (part.strip() for part in kind_index.split(":"))
        depth, position = (int(part) for part in index.split("-"))
        for key in ((depth, position), index):
            module = tiniest.layer(model, key)
            assert type(module).__name__ == kind, (key, module)
            assert own_params(module) == (0 if params == "--" else int(params.replace(",", ""))), key
        assert tiniest.layer(model, layer_name(model, index)) is tiniest.layer(model, (depth, position))


def test_indices_are_torchinfos_own() -> None:
    torchinfo = pytest.importorskip("torchinfo")
    model = tiniest.Tiniest()
    summary = torchinfo.summary(model, input_size=(1, 3, 32, 32), verbose=0)
    rows = [info for info in summary.summary_list if info.depth > 0]
    assert len(rows) == 62
    for info in rows:
        assert tiniest.layer(model, (info.depth, info.depth_index)) is info.module, info


def test_the_cards_examples_and_names() -> None:
    model = tiniest.Tiniest()
    assert tiniest.layer(model, (2, 4)) is model.l1.pool
    assert tiniest.layer(model, " 2 - 4 ") is model.l1.pool
    assert tiniest.layer(model, "l1.pool") is model.l1.pool
    assert tiniest.layer(model, (3, 1)) is model.l1.ln.ln
    assert tiniest.layer(model, (1, 12)) is model.fc
    assert layer_name(model, (2, 4)) == "l1.pool"


@pytest.mark.parametrize("index", [(4, 1), (1, 13), (1, 0), "2-45", "l1.poll", "", (2,), (2.0, 4), "2/4"])
def test_an_index_the_card_does_not_have_is_one_usage_error(index: object) -> None:
    with pytest.raises(UsageError, match=r"expected \(depth, index\).*depth 1 \(index 1-12\), 2 \(index 1-44\), 3 "):
        tiniest.layer(tiniest.Tiniest(), index)  # type: ignore[arg-type]
