"""engine.files: a named input is read only when it is a regular file, without blocking, within a limit;
scratch files are created exclusively and never left behind."""
from __future__ import annotations

import os
import threading

import pytest

from engine.files import FileRefused, check_regular, read_regular, scratch_file, write_atomic


def test_special_files_are_refused_by_what_they_are_without_blocking(tmp_path):
    fifo, loop = tmp_path / "pipe.txt", tmp_path / "loop.txt"
    os.mkfifo(fifo)
    loop.symlink_to(loop)
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    cases = {fifo: "is a FIFO (named pipe), not a text file", "/dev/zero": "is a character device, not a text file",
             tmp_path: "is a directory, not a text file", loop: "symlink loop",
             tmp_path / "gone": "broken symlink", tmp_path / "missing": "no such file"}
    for path, why in cases.items():
        done = []
        worker = threading.Thread(target=lambda: done.append(_refusal(path)), daemon=True)
        worker.start()
        worker.join(10)  # an open() of the FIFO would wait here for a writer forever
        assert done, f"{path}: blocked"
        assert done[0].startswith(f"{path}: {why}"), done[0]


def _refusal(path) -> str:
    try:
        read_regular(path, 1024, "a text file")
    except FileRefused as exc:
        return str(exc)
    return "read"


def test_the_size_limit_is_checked_before_reading(tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 11)
    assert read_regular(big, 11, "a text file") == b"x" * 11
    with pytest.raises(FileRefused, match="11 bytes, over the 10 byte limit for a text file"):
        check_regular(big, 10, "a text file")
    with pytest.raises(FileRefused, match="over the 10 byte limit"):
        read_regular(big, 10, "a text file")


def test_scratch_files_are_new_never_a_planted_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "index.json"
    (tmp_path / ".index.json.tmp").symlink_to(victim)  # the name older versions used
    names = {scratch_file(target) for _ in range(20)}
    assert len(names) == 20 and all(p.is_file() and not p.is_symlink() and p.stat().st_size == 0 for p in names)
    write_atomic(target, b"{}")
    assert target.read_bytes() == b"{}" and victim.read_text() == "precious"


def test_a_failed_atomic_write_leaves_neither_file(tmp_path):
    target = tmp_path / "index.json"
    target.mkdir()  # os.replace onto a folder fails
    with pytest.raises(OSError):
        write_atomic(target, b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def test_an_atomic_write_gets_the_mode_a_plain_open_gives(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "model.json", b"{}")
        (tmp_path / "plain.json").write_bytes(b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "model.json").stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777 == 0o644
