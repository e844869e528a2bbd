"""The writer lock as a second process meets it: a wait is announced, a stuck peer is given up on."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from tiniest.storage import writer_lock

# Holds the lock for the number of seconds given, after saying on stdout that it holds it.
PEER = """
import sys, time
from filelock import FileLock
with FileLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def peer_holding(lock_file: Path, seconds: float) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", PEER, str(lock_file), str(seconds)]
    peer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert peer.stdout is not None and peer.stdout.readline() == "held\n"
    return peer


def test_a_free_lock_is_taken_without_a_word(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with writer_lock(tmp_path / ".locks" / "a.lock", timeout=5) as access:
            assert access == "locked"
    assert caplog.records == []


def test_waiting_for_a_peer_is_announced_as_it_begins(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lock_file = tmp_path / ".locks" / "a.lock"
    lock_file.parent.mkdir()
    peer = peer_holding(lock_file, 1.0)
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="tiniest"), writer_lock(lock_file, timeout=60) as access:
            assert access == "locked"
            assert time.monotonic() - started > 0.5, "the lock was ours only once the peer had let it go"
    finally:
        peer.kill()
        peer.wait()
    assert [r.getMessage() for r in caplog.records] == [
        f"another process is writing the file locked by {lock_file}; waiting up to 60 s for it"
    ]


def test_a_stuck_peer_is_given_up_on_after_the_timeout(tmp_path: Path) -> None:
    lock_file = tmp_path / ".locks" / "a.lock"
    lock_file.parent.mkdir()
    peer = peer_holding(lock_file, 60)
    try:
        started = time.monotonic()
        expected = r"waited 0\.5 s for .*a\.lock; going on without it"
        with pytest.warns(RuntimeWarning, match=expected), writer_lock(lock_file, timeout=0.5) as access:
            assert access == "unlocked"
        assert time.monotonic() - started < 30
    finally:
        peer.kill()
        peer.wait()
