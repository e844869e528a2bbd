"""The pinned record agrees with the decisions the code makes once: the input contract and CIFAR-10's names."""

from __future__ import annotations

import json

import tiniest
from tiniest.classes import CIFAR10_CLASSES
from tiniest.transforms import PREPROCESSING, Preprocess
from tiniest.weights import RECORD_PATH, TiniestWeights


def test_release_json_states_the_input_contract_of_transforms() -> None:
    record = json.loads(RECORD_PATH.read_text(encoding="utf-8"))
    assert record["meta"]["preprocessing"] == PREPROCESSING
    built = TiniestWeights.DEFAULT.transforms()
    default = Preprocess()
    assert (built.size, built.shift) == (default.size, default.shift)


def test_the_published_classes_are_cifar10s() -> None:
    assert tiniest.CLASSES == CIFAR10_CLASSES == tuple(TiniestWeights.DEFAULT.meta["categories"])
    assert tiniest.Tiniest().labels == CIFAR10_CLASSES
    assert tiniest.Tiniest(3).labels == ("class_0", "class_1", "class_2")
