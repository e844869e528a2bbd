"""The published numbers: the exported release, loaded through the hub entrypoint, on CIFAR-10 test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT
from tiniest.data import load_split
from tiniest.weights import TiniestWeights

REPORT_ROW = re.compile(r"^\s*(\w+)\s+(\d\.\d{3})\s+(\d\.\d{3})\s+(\d\.\d{3})\s+(\d+)\s*$")


def card_per_class(card: str) -> dict[str, tuple[str, str, str]]:
    """Per-class (precision, recall, f1) strings from the model card's report."""
    classes = set(TiniestWeights.DEFAULT.meta["categories"])
    rows = {}
    for line in card.splitlines():
        match = REPORT_ROW.match(line)
        if match and match[1] in classes:
            rows[match[1]] = (match[2], match[3], match[4])
    return rows


@pytest.mark.slow
def test_exported_release_through_the_hub_reproduces_the_model_card(
    release_bytes: bytes, isolated_caches: Path, shared_cifar10: Path, model_card: str
) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    folder = isolated_caches / "weights"
    folder.mkdir()
    (folder / TiniestWeights.DEFAULT.release.filename).write_bytes(release_bytes)
    net = torch.hub.load(str(ROOT), "tiniest", source="local", trust_repo=True)

    test = load_split(shared_cifar10, "test")
    assert test.classes == tuple(TiniestWeights.DEFAULT.meta["categories"])
    with torch.inference_mode():
        predictions = torch.cat([net(batch.float() / 255 - 0.5).argmax(1) for batch in test.images.split(500)])

    assert int((predictions == test.labels).sum()) == 9463
    precision, recall, f1, support = metrics.precision_recall_fscore_support(test.labels, predictions)
    measured = {
        name: (f"{precision[i]:.3f}", f"{recall[i]:.3f}", f"{f1[i]:.3f}") for i, name in enumerate(test.classes)
    }
    assert measured == card_per_class(model_card)
    assert list(support) == [1000] * 10
