"""Reading a file a user named: only a regular file, without blocking, never past a size limit.

Images, pairs lists, label files and model files all come from paths on the
command line, and any of them can be a FIFO (an open would wait for a writer
forever), a device (``/dev/zero`` never ends), a directory or a symlink loop.
Each is refused with one line naming the path and what it is.
"""
from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


# Characters a terminal acts on instead of showing: C0/C1 controls (ESC starts colour, cursor and
# clear-screen sequences), DEL, and the Unicode line separators and bidirectional overrides/isolates
# (which reorder what follows on the line, e.g. the verdict).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text, newlines: bool = False) -> str:
    """``text`` with every character a terminal would act on written as an escape (``\\x1b``,
    ``\\u202e``): a file name like ``"\\x1b[2J OK same person.jpg"`` must not repaint an error line.
    ``newlines`` keeps line breaks, for messages made of several lines (a gate's table)."""
    def escape(m):
        code = ord(m.group())
        if newlines and m.group() == "\n":
            return "\n"
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _UNPRINTABLE.sub(escape, str(text))


class FileRefused(ValueError):
    """One line: ``<path>: <why>``; callers re-raise it as their own error class."""


def os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    if exc.errno == errno.ENOTDIR:
        return "no such file (a parent is not a folder)"
    if exc.errno == errno.ENAMETOOLONG:
        return "file name too long"
    return f"cannot read ({exc.strerror or exc})"


def _check(path: Path, st: os.stat_result, limit: int, what: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((kind for test, kind in _KINDS if test(st.st_mode)), "a special file")
        raise FileRefused(f"{path}: is {kind}, not {what}")
    if st.st_size > limit:
        raise FileRefused(f"{path}: {st.st_size:,} bytes, over the {limit:,} byte limit for {what}")


def check_regular(path: str | os.PathLike, limit: int, what: str) -> os.stat_result:
    """Stat ``path``; :class:`FileRefused` says what it is when not a regular file of at most ``limit`` bytes."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise FileRefused(f"{path}: broken symlink (to {os.readlink(path)})") from None
        raise FileRefused(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the name
        raise FileRefused(f"{path}: {os_reason(exc) if isinstance(exc, OSError) else 'invalid file name'}") from None
    _check(path, st, limit, what)
    return st


def read_regular(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, else :class:`FileRefused`.

    Opened without blocking and checked again on the open descriptor, so what
    is read is what was checked; at most ``limit + 1`` bytes are ever read.
    """
    path = Path(path)
    check_regular(path, limit, what)  # the clear message for the common cases
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileRefused(f"{path}: no such file") from None
    except OSError as exc:
        raise FileRefused(f"{path}: {os_reason(exc)}") from None
    try:
        _check(path, os.fstat(fd), limit, what)  # it may have been swapped since the stat
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise FileRefused(f"{path}: {os_reason(exc)}") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise FileRefused(f"{path}: over the {limit:,} byte limit for {what}")
    return data


def scratch_file(path: str | os.PathLike) -> Path:
    """A new, empty, hidden file beside ``path`` to fill and then ``os.replace`` onto it.

    Created exclusively (``mkstemp``: O_CREAT | O_EXCL, mode 0600), so a
    symlink planted under a predictable name in a shared cache folder is never
    followed, and concurrent writers never share one file.
    """
    import tempfile

    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def current_umask() -> int:
    """The process umask (read without changing it where /proc says it; else set and restored at once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a :func:`scratch_file` and a rename: readers never see half a file,
    and on failure nothing is left behind (the ``OSError`` is raised). The file gets the mode a plain
    ``open`` would have given it (mkstemp's 0600 would hide a model.json from the other users of a model)."""
    tmp = scratch_file(path)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# A tool's output folder carries this file, naming the tool; --force replaces nothing else.
OUTPUT_MARKER = ".fakeaware-output"


def mark_output(folder: str | os.PathLike, tool: str) -> None:
    """Name ``tool`` as the writer of ``folder`` (call on the folder being built, before it is renamed into place)."""
    (Path(folder) / OUTPUT_MARKER).write_text(tool + "\n")


def check_replaceable(out: str | os.PathLike, tool: str, inputs=(), own=None) -> None:
    """Refuse (:class:`FileRefused`) to replace ``out`` unless it is absent, an empty folder, or an
    earlier output of ``tool`` (its marker file); and whatever it is, if it is the current folder or
    above it, or holds any of ``inputs`` (files or folders the job reads).

    ``--force`` once deleted the data set a command was reading (``--out DATA`` beside ``DATA/val.csv``)
    and a user's unrelated files: it may only ever replace what this tool wrote. ``own(folder)``, if
    given, recognises the tool's output by its shape instead of the marker (where a marker file
    would be read by another program, as Triton reads every entry of a repository).
    """
    out = Path(out)
    out_abs = out.resolve()
    cwd = Path.cwd().resolve()
    if out_abs == cwd or out_abs in cwd.parents:
        raise FileRefused(f"{out}: is the current directory or one of its parents ({out_abs}); choose a new folder")
    for item in inputs:
        item_abs = Path(item).resolve()
        if item_abs == out_abs or out_abs in item_abs.parents:
            raise FileRefused(f"{out}: holds an input of this job ({item}); choose another output folder")
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise FileRefused(f"{out}: exists and is not a folder")
    if not any(out.iterdir()):
        return
    if own is not None:
        written_by = tool if own(out) else None
    else:
        marker = out / OUTPUT_MARKER
        try:
            written_by = marker.read_text().strip() if marker.is_file() and not marker.is_symlink() else None
        except OSError:
            written_by = None
    if written_by != tool:
        made = f"was written by {written_by}" if written_by else "was not written by this tool"
        raise FileRefused(f"{out}: not empty and {made}; --force only replaces an earlier output of {tool}. "
                          f"Choose a new folder, or delete it yourself")
