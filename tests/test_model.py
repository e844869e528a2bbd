"""The architecture against the model card: layer table row for row, and the same function."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from tiniest import LayerNorm2d, Tiniest

ROW = re.compile(
    r"^[\s│├└─]*(?P<name>\w+(?::\s*\d+-\d+)?)\s+\[(?P<input>[*\d, ]+)\]\s+"
    r"\[(?P<output>[*\d, ]+)\]\s+(?P<params>[\d,]+|--)\s+(?P<percent>[\d.]+%|--)\s*$"
)


def table_rows(text: str) -> list[tuple[str, ...]]:
    """Each torchinfo row as (class, depth-idx, input, output, params, percent), batch as ``*``."""
    rows = []
    for line in text.splitlines():
        match = ROW.match(line)
        if match is not None:
            rows.append(tuple(match.group(*ROW.groupindex)))
    return rows


def test_layer_table_matches_model_card_row_for_row(model_card: str) -> None:
    torchinfo = pytest.importorskip("torchinfo")
    expected = table_rows(model_card)
    assert len(expected) == 63, "the card's table has 63 rows"
    summary = torchinfo.summary(
        Tiniest(),
        input_size=(1, 3, 32, 32),
        col_names=("input_size", "output_size", "num_params", "params_percent"),
        verbose=0,
    )
    assert table_rows(str(summary).replace("[1, ", "[*, ")) == expected
    assert summary.total_params == summary.trainable_params == 97_530


def test_published_checkpoint_loads_strictly(shared_checkpoint) -> None:  # type: ignore[no-untyped-def]
    state = torch.load(shared_checkpoint, map_location="cpu", weights_only=True)
    Tiniest().load_state_dict(state, strict=True)
    assert sum(t.numel() for t in state.values()) == 97_530


def reference_logits(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The published model restated with functional ops straight from the state_dict."""

    def norm(prefix: str, y: torch.Tensor) -> torch.Tensor:
        y = y.permute(0, 2, 3, 1)
        y = F.layer_norm(y, y.shape[-1:], state[f"{prefix}.ln.weight"], state[f"{prefix}.ln.bias"])
        return y.permute(0, 3, 1, 2)

    def block(prefix: str, y: torch.Tensor) -> torch.Tensor:
        parts = torch.chunk(y, 4, dim=1)
        groups = parts[0].shape[1]
        w = lambda name: state[f"{prefix}.{name}"]  # noqa: E731
        a = F.conv2d(parts[1], w("dwconv1.weight"), w("dwconv1.bias"), padding=1, groups=groups)
        b = F.conv2d(parts[2], w("dwconv2.weight"), w("dwconv2.bias"), padding=3, groups=groups)
        c = F.avg_pool2d(parts[3], 3, stride=1, padding=1)
        c = F.conv2d(c, w("dwconv3.weight"), w("dwconv3.bias"), padding=9, dilation=3, groups=groups)
        h = norm(f"{prefix}.ln", torch.cat([parts[0], a, b, c], dim=1))
        h = F.conv2d(h, w("fc1.weight"), w("fc1.bias"))
        u, v = torch.chunk(h, 2, dim=1)
        h = F.conv2d(u * torch.tanh(torch.exp(u)) * v, w("fc2.weight"), w("fc2.bias"))
        return h + y * w("rs")

    y = norm("ln1", F.conv2d(x, state["conv1.weight"], state["conv1.bias"], padding=1))
    for name in ("l1", "l2", "l3"):
        y = block(name, y)
    y = norm("ln2", F.conv2d(y, state["dsconv.weight"], state["dsconv.bias"], stride=2, padding=1, groups=16))
    for name in ("l4", "l5", "l6"):
        y = block(name, y)
    return F.linear(y.mean(dim=(2, 3)), state["fc.weight"], state["fc.bias"])


def test_logits_match_the_published_function(shared_checkpoint) -> None:  # type: ignore[no-untyped-def]
    state = torch.load(shared_checkpoint, map_location="cpu", weights_only=True)
    model = Tiniest()
    model.load_state_dict(state, strict=True)
    model.eval()
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)) - 0.5
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_logits(state, x), rtol=0, atol=1e-5)


def test_blocks_hold_a_real_avgpool_submodule_that_hooks_see() -> None:
    model = Tiniest().eval()
    seen: list[tuple[int, ...]] = []
    model.l1.pool.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        model(torch.zeros(2, 3, 32, 32))
    assert seen == [(2, 12, 32, 32)]
    assert isinstance(model.ln1, LayerNorm2d)


def seeded_model() -> Tiniest:
    torch.manual_seed(0)
    return Tiniest()


def graph_capture(how: str, model: Tiniest, x: torch.Tensor) -> torch.nn.Module:
    """``model`` captured by one of torch's graph tools, under the default grad mode."""
    if how == "trace":
        return torch.jit.trace(model, x)  # check_trace re-runs it: one graph under every grad mode
    if how == "script":
        return torch.jit.script(model)
    if how == "fx":
        return torch.fx.symbolic_trace(model)
    batch = torch.export.Dim("batch", min=2)
    return torch.export.export(model, (x,), dynamic_shapes=({0: batch},)).module()


@pytest.mark.parametrize("how", ["trace", "script", "fx", "export"])
def test_graph_tools_capture_the_model_under_the_default_grad_mode(how: str) -> None:
    model = seeded_model()
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)) - 0.5
    assert torch.is_grad_enabled(), "the default grad mode, as a user has it"
    captured = graph_capture(how, model, x)
    for batch in (4, 7):
        y = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)) - 0.5
        want = model(y)
        got = captured(y)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        with torch.no_grad():  # the same graph serves inference
            torch.testing.assert_close(captured(y), want.detach(), rtol=0, atol=1e-5)
    # and training: the same input gradients as the eager model's
    y = x.clone().requires_grad_(True)
    (want_grad,) = torch.autograd.grad(model(y).square().sum(), y)
    (got_grad,) = torch.autograd.grad(captured(y).square().sum(), y)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-5)
