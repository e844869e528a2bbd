"""Names that come from users: checked before they name a repository or a revision, escaped before they are shown.

A repository id or a revision ends up in a URL, in a path of huggingface_hub's cache and in
commands a user pastes into a shell; a class or file name ends up on a terminal, in a model card
and on a plot. The validators keep to the rules of whoever owns the name (GitHub's, the Hub's, git's)
and raise one ``UsageError`` naming the parameter; ``printable`` and
``markdown`` make any text safe to show. huggingface_hub is imported only by
``hf_repo_id``: torch.hub users may not have it.
"""

from __future__ import annotations

import keyword
import re
import unicodedata

from tiniest.errors import UsageError, first_line

__all__ = ["git_ref", "github_repo", "hf_repo_id", "markdown", "printable", "release_name"]

# GitHub: an account (user or organization) is 1-39 letters, digits and single inner hyphens
_GITHUB_OWNER = re.compile(r"[A-Za-z0-9](?:-?[A-Za-z0-9])*")
_GITHUB_OWNER_MAX = 39
# a repository: 1-100 ASCII letters, digits, '.', '-', '_'; GitHub drops a '.git' suffix and reserves '.wiki'
_GITHUB_REPO = re.compile(r"[A-Za-z0-9._-]{1,100}")
# git check-ref-format: no control character, space, ~ ^ : ? * [ \ anywhere
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_REF_MAX = 255  # one path component of huggingface_hub's cache (refs/<revision>) on common file systems
# what a terminal acts on instead of showing: controls (C0, C1, DEL), format characters (bidi
# overrides, zero widths), line and paragraph separators, and lone surrogates (undecodable bytes)
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# characters markdown or HTML give a meaning to inline: entities for HTML's, a backslash for markdown's
_MARKDOWN = re.compile(r"[\\`*_\[\]()#!|~$]")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# what a TiniestWeights member may not be called: its alias and the names of its own attributes
_RESERVED_NAMES = frozenset({"DEFAULT", "from_name", "release", "meta", "url", "transforms"})


def github_repo(value: str, parameter: str) -> str:
    """``value`` if it is a GitHub ``owner/name`` by GitHub's rules, else a ``UsageError`` naming ``parameter``."""
    owner, slash, name = value.partition("/")
    expected = (
        f"{parameter}: expected a GitHub repository OWNER/NAME (owner: 1-{_GITHUB_OWNER_MAX} letters, digits or "
        "single inner hyphens; name: 1-100 letters, digits, '.', '-' or '_', not '.' or '..'), "
        f"got {value!r}"
    )
    if not (slash and _GITHUB_OWNER.fullmatch(owner) and len(owner) <= _GITHUB_OWNER_MAX):
        raise UsageError(expected)
    if not _GITHUB_REPO.fullmatch(name) or name in (".", ".."):
        raise UsageError(expected)
    if name.lower().endswith((".git", ".wiki")):
        raise UsageError(f"{parameter}: GitHub drops a '.git' suffix and reserves '.wiki'; got {value!r}")
    return value


def hf_repo_id(value: str, parameter: str) -> str:
    """``value`` if it is a Hugging Face ``owner/name`` by huggingface_hub's own validator, else a ``UsageError``."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id  # type: ignore[attr-defined]

    if value.count("/") != 1:
        raise UsageError(f"{parameter}: expected a Hugging Face repo id OWNER/NAME, got {value!r}")
    try:
        validate_repo_id(value)
    except HFValidationError as error:
        reason = printable(first_line(error))  # it names the value
        raise UsageError(f"{parameter}: expected a Hugging Face repo id OWNER/NAME: {reason}") from None
    return value


def _ref_problem(value: str) -> str:
    """What git's ref-name rules find wrong with ``value`` (as the end of a sentence), or ``""``."""
    if not value:
        return "is empty"
    if len(value) > _REF_MAX:
        return f"is longer than {_REF_MAX} characters"
    if _REF_FORBIDDEN.search(value):
        return "holds a control character, a space or one of ~ ^ : ? * [ \\"
    if any(part in value for part in ("..", "//", "@{")) or value == "@":
        return "holds '..', '//' or '@{', or is '@'"
    if value.startswith(("-", "/")) or value.endswith(("/", ".")):
        return "starts with '-' or '/', or ends with '/' or '.'"
    if any(part.startswith(".") or part.endswith(".lock") for part in value.split("/")):
        return "has a part that starts with '.' or ends with '.lock'"
    return ""


def git_ref(value: str, parameter: str) -> str:
    """``value`` if git accepts it as a tag, branch or revision name (``git check-ref-format``), else a ``UsageError``.

    One level is enough (``v1``, ``main``, a commit id); a leading ``-`` is refused as git refuses it
    for branches, so that no pasted command reads the name as an option.
    """
    problem = _ref_problem(value)
    if problem:
        raise UsageError(f"{parameter}: expected a git tag, branch or commit name, got {value!r}, which {problem}")
    return value


def printable(text: str) -> str:
    """``text`` with what a terminal would act on (ANSI escapes, newlines, bidi overrides...) written as escapes.

    ``"a\\x1b[31mb\\n"`` becomes ``a\\x1b[31mb\\n`` as visible characters: a name can neither colour
    the terminal nor forge a line of output.
    """
    if text.isprintable():
        return text
    return "".join(
        char.encode("unicode_escape").decode("ascii") if unicodedata.category(char) in _UNPRINTABLE else char
        for char in text
    )


def markdown(text: str) -> str:
    """``text`` shown as itself inside a line of markdown: no link, emphasis, table cell break, heading or HTML."""
    escaped = _MARKDOWN.sub(lambda match: "\\" + match.group(), printable(text))
    return "".join(_HTML.get(char, char) for char in escaped)


def release_name(name: object, parameter: str) -> str:
    """A release name that can be a ``TiniestWeights`` member (``CIFAR10_V2``): an identifier, public, not reserved."""
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
