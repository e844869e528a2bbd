"""The pinned weights release, read from ``release.json``: the one place its hash lives.

Both a torch.hub checkout and a pip install read the same file (it ships as package
data), so the sha256 of the published artifact is written exactly once. A record is read
(``Release.from_record``) and written (``Release.to_record``) here only: ``tiniest
release`` writes one beside the files it makes. ``TiniestWeights`` declares its members in
code, so that type checkers see them; a test holds them equal to ``release.json``, and a fork that
pins its own release renames the member along with the record (an import refuses a record the
enum does not declare).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tiniest.errors import ArtifactError, UsageError
from tiniest.weights.formats import sha256_hex

if TYPE_CHECKING:  # the transforms are imported when asked for, not with the weights
    from tiniest.transforms import Preprocess

__all__ = [
    "CLASSES",
    "NOT_GIVEN",
    "RECORD_NAME",
    "RECORD_PATH",
    "NotGiven",
    "Release",
    "TiniestWeights",
    "describe_mismatch",
]

RECORD_NAME = "release.json"
RECORD_PATH = Path(__file__).with_name(RECORD_NAME)
GITHUB = "https://github.com"  # where the release files are published (a mirror: tiniest.weights.downloads)
_FACTS = frozenset({"name", "filename", "sha256", "size", "source", "meta"})  # a record's other keys: sources
MAX_RECORD_BYTES = 1 << 20  # a record is about 2 KB: a larger release.json (or config.json) is not read


@dataclass(frozen=True)
class Release:
    """One published weights file, the publisher's original checkpoint, and where each network source finds them.

    ``where`` holds every entry of the record but the file's own facts: ``"github"`` (``repo``, ``tag``),
    ``"huggingface"`` (``repo_id``, ``revision``, ``filename``), in the order the sources are tried. A new
    source is a finder (``tiniest.weights.downloads.DOWNLOADS``) and its entry in the record.
    """

    name: str
    filename: str
    sha256: str
    size: int
    source_path: str  # the original checkpoint: under github.com, pinned by its own sha256 and size
    source_sha256: str
    source_size: int
    where: dict[str, dict[str, str]] = field(hash=False)
    meta: dict[str, Any] = field(hash=False, compare=False)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Release:
        """The release a ``release.json`` record describes (the inverse of ``to_record``)."""
        source = record["source"]
        return cls(
            name=record["name"],
            filename=record["filename"],
            sha256=record["sha256"],
            size=int(record["size"]),
            source_path=source["path"],
            source_sha256=source["sha256"],
            source_size=int(source["size"]),
            where={key: value for key, value in record.items() if key not in _FACTS},
            meta=record["meta"],
        )

    def to_record(self) -> dict[str, Any]:
        """The ``release.json`` record of this release (the inverse of ``from_record``, same key order)."""
        return {
            "name": self.name,
            "filename": self.filename,
            "sha256": self.sha256,
            "size": self.size,
            **self.where,
            "source": {"path": self.source_path, "sha256": self.source_sha256, "size": self.source_size},
            "meta": self.meta,
        }

    def pins(self, data: bytes) -> bool:
        """Whether ``data`` is this release's file or the publisher's original checkpoint, by their sha256."""
        return sha256_hex(data) in (self.sha256, self.source_sha256)

    @property
    def url(self) -> str:
        """The GitHub release asset."""
        github = self.where["github"]
        return f"{GITHUB}/{github['repo']}/releases/download/{github['tag']}/{self.filename}"

    @property
    def source_url(self) -> str:
        """The original torch checkpoint at its immutable, commit-pinned address."""
        return f"{GITHUB}/{self.source_path}"

    def transforms(self) -> Preprocess:
        """The preprocessing these weights expect, as a module (see ``tiniest.transforms``)."""
        from tiniest.transforms import Preprocess

        return Preprocess.from_meta(self.meta["preprocessing"])


def describe_mismatch(data: bytes, release: Release, expected: str | None = None) -> str:
    """What came instead of the pinned bytes: hash and size against the expected ones, and whether it is HTML."""
    expected_size = "" if expected else f" ({release.size} bytes)"
    text = f"sha256 {sha256_hex(data)} ({len(data)} bytes), expected {expected or release.sha256}{expected_size}"
    if data[:512].lstrip().lower().startswith((b"<!doctype html", b"<html")):
        text += "; it is an HTML page (a proxy, captive portal or error page answered instead of the file)"
    return text


try:
    _PINNED = Release.from_record(json.loads(RECORD_PATH.read_text(encoding="utf-8")))
except (ValueError, KeyError, TypeError) as error:
    raise ArtifactError(f"{RECORD_PATH}: expected a release record ({type(error).__name__}: {error})") from None


class TiniestWeights(Enum):
    """Published weights, in the style of torchvision's weights enums.

    ``CIFAR10_V1``, the pinned release, and ``DEFAULT``, its alias. A member's value is the
    ``Release`` that ``release.json`` describes.
    """

    CIFAR10_V1 = _PINNED
    DEFAULT = _PINNED

    @classmethod
    def from_name(cls, name: str) -> TiniestWeights:
        """The member called ``name`` (``"DEFAULT"``, ``"CIFAR10_V1"``, ``"TiniestWeights.CIFAR10_V1"``), as
        torchvision's weights enums accept them; a ValueError listing the valid names otherwise."""
        member = cls.__members__.get(name.removeprefix(f"{cls.__name__}."))
        if member is None:
            valid = ", ".join(repr(known) for known in cls.__members__)
            raise UsageError(
                f"unknown weights {name!r}: expected one of {valid} (or {cls.__name__}.<name>), "
                "a path to a .safetensors or .pt file, or an http(s) URL"
            )
        return member

    @property
    def release(self) -> Release:
        return self.value

    @property
    def meta(self) -> dict[str, Any]:
        return self.release.meta

    @property
    def url(self) -> str:
        return self.release.url

    def transforms(self) -> Preprocess:
        """The preprocessing these weights expect (torchvision's ``weights.transforms()``)."""
        return self.release.transforms()


CLASSES: tuple[str, ...] = tuple(TiniestWeights.DEFAULT.meta["categories"])


if _PINNED.name not in TiniestWeights.__members__:  # a fork's record names the member it must declare
    raise ArtifactError(
        f"{RECORD_PATH}: names the release {_PINNED.name!r}; expected one TiniestWeights declares "
        f"({', '.join(name for name in TiniestWeights.__members__ if name != 'DEFAULT')})"
    )


class NotGiven(Enum):
    """The default of ``weights=``: the caller named no weights, so ``TINIEST_WEIGHTS`` may choose them."""

    NOT_GIVEN = "NOT_GIVEN"

    def __repr__(self) -> str:  # as help() shows the default
        return "NOT_GIVEN"


NOT_GIVEN: Final = NotGiven.NOT_GIVEN
"""``weights=`` left out: what ``TINIEST_WEIGHTS`` names where it is set, else ``TiniestWeights.DEFAULT``."""
