"""A run decodes only the images it uses: ``limit_train`` bounds the training images and, unless
``limit_test`` says otherwise, the held-out ones to the same fraction (issue 29: a "few seconds" example
decoded all 60,000 CIFAR-10 pictures)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.tiny_runs import make_dataset
from tiniest.data import load_split
from tiniest.training.rundata import load_run_data, subset


def decoded(cache: Path) -> list[int]:
    """The number of images in each decoded-split file of the cache, sorted."""
    return sorted(len(load_file(path)["labels"]) for path in (cache / "datasets").glob("*.safetensors"))


def test_limit_train_decodes_its_images_and_the_same_fraction_of_the_test_split(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", train_per_class=16, test_per_class=4)  # 160 train, 40 test images
    run = load_run_data(str(data), limit_train=20, seed=3, val_fraction=None, limit_test=None, progress=False)
    assert (len(run.train), len(run.held_out), run.sizes) == (20, 5, {"train": 160, "test": 40})  # 20/160 of 40
    assert run.held_out_record["made_by"] == "the dataset's test split, a fixed random 5 of its 40 images"
    assert decoded(Path(os.environ["TINIEST_CACHE"])) == [5, 20], "nothing else decoded"
    whole = load_split(data, "train")  # the same images as a subset of the whole split
    assert torch.equal(run.train.images, whole.images[subset(160, 20, 3)])
    assert run.content["train"] == whole.content, "the whole split's files, as a resumed run compares them"
    given = load_run_data(str(data), limit_train=20, seed=3, val_fraction=None, limit_test=7, progress=False)
    assert len(given.held_out) == 7 and torch.equal(given.train.images, run.train.images)


def test_a_validation_split_is_bounded_too_and_both_parts_stay_cached(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", train_per_class=16, test_per_class=0)
    cache = Path(os.environ["TINIEST_CACHE"])
    first = load_run_data(str(data), limit_train=12, seed=0, val_fraction=0.25, limit_test=None, progress=False)
    assert (len(first.train), len(first.held_out), first.sizes) == (12, 4, {"train": 120, "validation": 40})
    assert decoded(cache) == [4, 12]
    assert not set(first.train.identities) & set(first.held_out.identities)
    again = load_run_data(str(data), limit_train=12, seed=0, val_fraction=0.25, limit_test=None, progress=False)
    assert decoded(cache) == [4, 12], "the two parts of one split do not evict each other"
    assert torch.equal(again.held_out.images, first.held_out.images)
    whole = load_run_data(str(data), limit_train=None, seed=0, val_fraction=0.25, limit_test=None, progress=False)
    assert (len(whole.train), len(whole.held_out)) == (120, 40)
