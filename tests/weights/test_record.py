"""The pinned record agrees with the decisions the code makes once: the input contract and CIFAR-10's names."""

from __future__ import annotations

import json
from pathlib import Path

import tiniest
from tiniest.classes import CIFAR10_CLASSES
from tiniest.transforms import PREPROCESSING, Preprocess
from tiniest.weights import RECORD_PATH, Release, TiniestWeights


def test_release_json_states_the_input_contract_of_transforms() -> None:
    """The pinned record keeps the prose its published bytes embed (their sha256 covers it); it means the numbers
    new weights are written with, and ``transforms()`` is built from it."""
    record = json.loads(RECORD_PATH.read_text(encoding="utf-8"))
    assert Preprocess.from_meta(record["meta"]["preprocessing"]).contract == PREPROCESSING
    built = TiniestWeights.DEFAULT.transforms()
    assert isinstance(built, Preprocess) and built.contract == Preprocess().contract == PREPROCESSING
    assert (built.size, built.mean, built.std) == ((32, 32), (0.5, 0.5, 0.5), (1.0, 1.0, 1.0))


def test_the_published_classes_are_cifar10s() -> None:
    assert tiniest.CLASSES == CIFAR10_CLASSES == tuple(TiniestWeights.DEFAULT.meta["categories"])
    assert tiniest.Tiniest().labels == CIFAR10_CLASSES
    assert tiniest.Tiniest(3).labels == ("class_0", "class_1", "class_2")


def test_a_record_and_its_release_convert_both_ways_in_one_place() -> None:
    """``release.json`` read with ``Release.from_record`` and written back with ``to_record`` is the same record."""
    record = json.loads(RECORD_PATH.read_text(encoding="utf-8"))
    release = Release.from_record(record)
    assert release.to_record() == record and list(release.to_record()) == list(record)  # same keys, same order
    assert Release.from_record(release.to_record()) == release
    assert TiniestWeights.DEFAULT is TiniestWeights.__members__[record["name"]]  # the member is named by the record


def test_the_declared_members_are_the_release_json_record() -> None:
    """Members are declared in code (type checkers see ``CIFAR10_V1``); this holds them equal to the pinned record."""
    import ast

    import tiniest.weights.releases as releases

    record = json.loads(RECORD_PATH.read_text(encoding="utf-8"))
    tree = ast.parse(Path(releases.__file__).read_text(encoding="utf-8"))
    enum = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "TiniestWeights")
    declared = [target.id for node in enum.body if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)]
    assert declared == [record["name"], "DEFAULT"]
    assert TiniestWeights.CIFAR10_V1 is TiniestWeights.DEFAULT is TiniestWeights.from_name(record["name"])
    assert TiniestWeights.CIFAR10_V1.release.to_record() == record
