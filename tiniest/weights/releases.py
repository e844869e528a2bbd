"""The pinned weights release, read from ``release.json``: the one place its hash lives.

Both a torch.hub checkout and a pip install read the same file (it ships as package
data), so the sha256 of the published artifact is written exactly once. A record is read
(``Release.from_record``) and written (``Release.to_record``) here only: ``tiniest
release`` writes one beside the files it makes. ``TiniestWeights`` declares its members in
code, so that type checkers see them; a test holds them equal to ``release.json``, and a fork that
pins its own release renames the member along with the record (an import refuses a record the
enum does not declare).

A release's plain ``.pt`` (its "original") is a bare state_dict, holding no class names:
``release_beside`` finds them in the record that lies beside it, matched by sha256.
"""

from __future__ import annotations

import json
import keyword
import urllib.parse
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tiniest.env import env_text
from tiniest.errors import ArtifactError, UsageError
from tiniest.files import read_regular
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
    "check_release_name",
    "describe_mismatch",
    "github_base_url",
    "release_beside",
]

RECORD_NAME = "release.json"
RECORD_PATH = Path(__file__).with_name(RECORD_NAME)
DEFAULT_GITHUB_URL = "https://github.com"
MAX_RECORD_BYTES = 1 << 20  # a record is about 2 KB: a larger release.json beside a file is not read
_RESERVED_NAMES = frozenset({"DEFAULT", "from_name", "release", "meta", "url", "transforms"})


def check_release_name(name: object, parameter: str = "name") -> str:
    """A release name that can be a ``TiniestWeights`` member (``CIFAR10_V1``); a UsageError otherwise."""
    if (
        not isinstance(name, str)
        or not name.isidentifier()
        or not name.isascii()
        or keyword.iskeyword(name)
        or name.startswith("_")
        or name in _RESERVED_NAMES
    ):
        raise UsageError(
            f"{parameter}: expected a Python identifier such as CIFAR10_V2 (a TiniestWeights member, not "
            f"starting with '_', not one of {', '.join(sorted(_RESERVED_NAMES))}), got {name!r}"
        )
    return name


def github_base_url() -> str:
    """``https://github.com``, or the mirror named by ``TINIEST_GITHUB_URL`` (an http(s) URL with a host)."""
    value = env_text("TINIEST_GITHUB_URL")
    if value is None:
        return DEFAULT_GITHUB_URL
    try:
        parts = urllib.parse.urlsplit(value)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number
        valid = False
    if not valid or parts.query or parts.fragment:
        raise UsageError(f"TINIEST_GITHUB_URL: expected an http(s) URL such as {DEFAULT_GITHUB_URL}, got {value!r}")
    return value.rstrip("/")


@dataclass(frozen=True)
class Release:
    """One published weights file and everything needed to find and verify it."""

    name: str
    filename: str
    sha256: str
    size: int
    github_repo: str
    github_tag: str
    hf_repo_id: str
    hf_revision: str
    hf_filename: str
    source_path: str
    source_sha256: str
    source_size: int
    meta: dict[str, Any] = field(hash=False, compare=False)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Release:
        """The release a ``release.json`` record describes (the inverse of ``to_record``)."""
        github, hf, source = record["github"], record["huggingface"], record["source"]
        return cls(
            name=check_release_name(record["name"], "release.json name"),
            filename=record["filename"],
            sha256=record["sha256"],
            size=int(record["size"]),
            github_repo=github["repo"],
            github_tag=github["tag"],
            hf_repo_id=hf["repo_id"],
            hf_revision=hf["revision"],
            hf_filename=hf["filename"],
            source_path=source["path"],
            source_sha256=source["sha256"],
            source_size=int(source["size"]),
            meta=record["meta"],
        )

    def to_record(self) -> dict[str, Any]:
        """The ``release.json`` record of this release (the inverse of ``from_record``, same key order)."""
        return {
            "name": self.name,
            "filename": self.filename,
            "sha256": self.sha256,
            "size": self.size,
            "github": {"repo": self.github_repo, "tag": self.github_tag},
            "huggingface": {"repo_id": self.hf_repo_id, "revision": self.hf_revision, "filename": self.hf_filename},
            "source": {"path": self.source_path, "sha256": self.source_sha256, "size": self.source_size},
            "meta": self.meta,
        }

    @property
    def url(self) -> str:
        """The GitHub release asset (honours ``TINIEST_GITHUB_URL``)."""
        return f"{github_base_url()}/{self.github_repo}/releases/download/{self.github_tag}/{self.filename}"

    @property
    def source_url(self) -> str:
        """The original torch checkpoint at its immutable, commit-pinned address."""
        return f"{github_base_url()}/{self.source_path}"

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


def release_beside(path: Path, sha256: str) -> Release | None:
    """The release whose record (``release.json``) lies beside ``path`` and names its bytes, else None.

    ``tiniest release`` writes the record beside the plain ``.pt`` it publishes; the record names
    that file by its sha256 (its ``source``) and the release file by the artifact's. A record
    that is missing, too large, unreadable or about other bytes is no record of this file.
    """
    try:
        record = json.loads(read_regular(path.parent / RECORD_NAME, MAX_RECORD_BYTES))
        release = Release.from_record(record)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return release if sha256 in (release.source_sha256, release.sha256) and isinstance(release.meta, dict) else None


def _load_record() -> Release:
    with RECORD_PATH.open(encoding="utf-8") as handle:
        try:
            return Release.from_record(json.load(handle))
        except (ValueError, KeyError, TypeError) as error:
            raise ArtifactError(f"{RECORD_PATH}: expected a release record ({type(error).__name__}: {error})") from None


_PINNED = _load_record()


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
