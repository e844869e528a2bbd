"""Names from users: GitHub's and the Hub's repository rules, git's ref-name rules (checked against git itself),
and the escapes that keep names inert on a terminal and in markdown."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tiniest import names
from tiniest.errors import UsageError

REFS = [
    "v1", "weights-v1", "main", "refs/pr/1", "release/2025.1", "a" * 40, "0123456789abcdef" * 4, "tag@1", "déjà",
    "", "@", "..", "a..b", "../../../../evil/tag", "/v1", "v1/", "a//b", "v1.", ".v1", "a/.b", "v1.lock", "a.lock/b",
    "a b", "a~1", "a^", "a:b", "a?", "a*", "a[1]", "a\\b", "a@{1}", "a\x00b", "a\x1bb", "a\nb", "a\x7fb", "-v1",
]


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
@pytest.mark.parametrize("ref", REFS)
def test_git_refs_follow_git_check_ref_format(ref: str) -> None:
    """Accepted exactly when git accepts it (one level allowed), except a leading '-' that could read as an option."""
    try:
        git = subprocess.run(["git", "check-ref-format", "--allow-onelevel", ref], capture_output=True, timeout=30)
        git_accepts = git.returncode == 0
    except ValueError:  # a NUL byte cannot even be passed to git
        git_accepts = False
    if ref.startswith("-"):
        git_accepts = False
    if git_accepts:
        assert names.git_ref(ref, "--tag") == ref
    else:
        with pytest.raises(UsageError, match=r"^--tag: expected a git tag, branch or commit name, got "):
            names.git_ref(ref, "--tag")


def test_a_long_ref_is_refused() -> None:
    with pytest.raises(UsageError, match="longer than 255"):
        names.git_ref("v" * 256, "--hf-revision")


@pytest.mark.parametrize(
    "repo", ["alice/x", "a/b", "tiniest-models/tiniest", "A1-b2/x.y_z-1", f"{'a' * 39}/{'b' * 100}", "alice/.x"]
)
def test_github_repos_that_github_takes(repo: str) -> None:
    assert names.github_repo(repo, "--github-repo") == repo


@pytest.mark.parametrize(
    "repo",
    [
        "alice", "alice/", "/x", "alice/x/y", "../x", "alice/..", "alice/.", "-alice/x", "alice-/x", "al--ice/x",
        f"{'a' * 40}/x", f"a/{'b' * 101}", "alice/x;id", "alice/x y", "alice/x$(id)", "al_ice/x", "alice/é",
        "alice/x.git", "alice/x.wiki", "alice/x\n", "",
    ],
)
def test_github_repos_that_github_refuses(repo: str) -> None:
    with pytest.raises(UsageError, match=r"^--github-repo: "):
        names.github_repo(repo, "--github-repo")


@pytest.mark.parametrize("repo", ["alice/x", "tiniest-models/tiniest-cifar10", "ego-thales/cifar10", "a/b.c_d-e"])
def test_hub_repo_ids_the_hub_takes(repo: str) -> None:
    assert names.hf_repo_id(repo, "--hf-repo-id") == repo


@pytest.mark.parametrize("repo", ["alice/x y", "../..", "x", "a/b/c", "a/b..c", "a/b--c", "c/d$(id)", "a/-x", ""])
def test_hub_repo_ids_the_hub_refuses(repo: str) -> None:
    with pytest.raises(UsageError, match=r"^--hf-repo-id: expected a Hugging Face repo id OWNER/NAME"):
        names.hf_repo_id(repo, "--hf-repo-id")


def test_printable_escapes_what_a_terminal_acts_on() -> None:
    assert names.printable("cat") == "cat" and names.printable("chat noir été 猫") == "chat noir été 猫"
    hostile = "a\x1b[31mb\nc\rd\te\x85f\u202eg\u200bh\u2028i\udcffj\x7f"
    shown = names.printable(hostile)
    assert shown == "a\\x1b[31mb\\nc\\rd\\te\\x85f\\u202eg\\u200bh\\u2028i\\udcffj\\x7f"
    assert shown.isprintable() and shown.encode("ascii")  # printable, and encodable anywhere


def test_markdown_keeps_names_inert() -> None:
    from markdown_it import MarkdownIt

    hostile = "<img src=x onerror=alert(1)> **b** _i_ `c` [l](https://x.example) a|b ![i](x) ~~s~~ $m$ \\ & #h\nnext"
    html = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(f"| {names.markdown(hostile)} |\n|---|\n")
    cell = html.split("<tbody>")[0].split("<th>")[1].split("</th>")[0]
    assert cell == (
        "&lt;img src=x onerror=alert(1)&gt; **b** _i_ `c` [l](https://x.example) a|b ![i](x) ~~s~~ $m$ \\ &amp; "
        "#h\\nnext"
    )
