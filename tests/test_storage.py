"""The writer lock as a second process meets it: a wait is announced, a stuck peer is given up on."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from tiniest.storage import save_atomically, writer_lock

# Holds the lock for the number of seconds given, after saying on stdout that it holds it; the last thing
# it does under the lock is to leave a file named <lock>.released.
PEER = """
import sys, time
from pathlib import Path
from filelock import FileLock
with FileLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    Path(sys.argv[1] + ".released").touch()
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
        with caplog.at_level(logging.WARNING, logger="tiniest"), writer_lock(lock_file, timeout=60) as access:
            assert access == "locked"
            assert Path(f"{lock_file}.released").exists(), "the lock was ours only once the peer had let it go"
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
        expected = r"waited 0\.5 s for .*a\.lock; going on without it"
        with pytest.warns(RuntimeWarning, match=expected), writer_lock(lock_file, timeout=0.5) as access:
            assert access == "unlocked"
            assert not Path(f"{lock_file}.released").exists(), "the peer still holds it"
    finally:
        peer.kill()
        peer.wait()


def test_a_symlink_in_place_of_the_lock_file_is_replaced_not_followed(tmp_path: Path) -> None:
    """A link planted as the lock file (to a file of the user's, or to nowhere) must not turn the cache off."""
    target = tmp_path / "precious"
    target.write_text("keep me")
    locks = tmp_path / ".locks"
    locks.mkdir()
    (locks / "a.lock").symlink_to(target)
    (locks / "b.lock").symlink_to(tmp_path / "nowhere" / "x")
    for name in ("a.lock", "b.lock"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with writer_lock(locks / name, timeout=5) as access:
                assert access == "locked"
        assert not (locks / name).is_symlink()
    assert target.read_text() == "keep me"


# Writes a large file with save_atomically; the test SIGKILLs it while its temporary file exists.
WRITER = """
import sys
from pathlib import Path
from tiniest.storage import save_atomically
data = bytes(256 * 1024 * 1024)
print("ready", flush=True)
save_atomically(Path(sys.argv[1]), data)
"""


def parts_of(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.*.part"))


def test_the_part_file_of_a_sigkilled_writer_is_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "file.bin"
    target.parent.mkdir()
    for _ in range(5):  # the kill must land while the 256 MiB are being written: try again if it came too late
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout is not None and writer.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 60
        while not parts_of(target) and writer.poll() is None and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(30)
        writer.stdout.close()
        if parts_of(target):
            break
        target.unlink(missing_ok=True)
    [stale] = parts_of(target)
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))  # as it is when the next write comes, much later

    save_atomically(target, b"fresh")
    assert target.read_bytes() == b"fresh"
    assert parts_of(target) == [], "the dead writer's temporary file is gone"


# Holds an flock on an existing file, as save_atomically does on its temporary file while it writes.
HOLDER = """
import fcntl, os, sys, time
handle = os.open(sys.argv[1], os.O_WRONLY)
fcntl.flock(handle, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_the_part_file_of_a_live_writer_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    live = tmp_path / f".{target.name}.0123abcd.part"
    live.write_bytes(b"half")
    hour_ago = time.time() - 3600
    os.utime(live, (hour_ago, hour_ago))  # a slow writer: old, but still at work
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(live)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        save_atomically(target, b"mine")
        assert live.exists(), "a temporary file a live process holds is not stale"
    finally:
        holder.kill()
        holder.wait(30)
        if holder.stdout:
            holder.stdout.close()
    save_atomically(target, b"again")
    assert not live.exists(), "once its writer is gone, it is"


def test_a_stale_file_that_cannot_be_removed_does_not_stop_the_write(tmp_path: Path) -> None:
    """Cleaning up after someone else is best effort: a failing unlink raised out of save_atomically."""
    target = tmp_path / "file.bin"
    odd = tmp_path / f".{target.name}.0123abcd.part"
    odd.mkdir()  # unlink() fails on it (EISDIR), whoever runs the test, root included
    hour_ago = time.time() - 3600
    os.utime(odd, (hour_ago, hour_ago))
    save_atomically(target, b"mine")
    assert target.read_bytes() == b"mine" and odd.is_dir()
