"""Writing a file so that a reader sees the old one or the new one, never half of one (private).

Used by the MNIST cache (:mod:`bnlib.data`) and the chapters' verdict files
(:mod:`bnlib.claims`): both may be read by another process while they are written.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def temporary_pattern(prefix: str) -> re.Pattern[str]:
    """The names :func:`write_atomically` gives its temporary files for ``prefix``, with groups ``host`` and ``pid``.

    A clean-up of files left by killed writes matches against this, so the two never disagree on the name.

    Example:
        >>> temporary_pattern(".out-").match(".out-box-42-0123456789abcdef.tmp")["pid"]
        '42'
    """
    return re.compile(rf"^{re.escape(prefix)}(?P<host>.*)-(?P<pid>\d+)-[0-9a-f]{{16}}\.tmp$")


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], object], *, prefix: str) -> None:
    """Call ``write`` on a temporary file beside ``path``, then ``os.replace`` it onto ``path``.

    The temporary file is named ``<prefix><host>-<pid>-<random>.tmp`` in the same folder (so the
    replace is atomic and a killed write's leftover can be found by its prefix), and is created
    with mode 0o666 minus the umask, as ``open`` does: ``tempfile.mkstemp`` would make it 0o600,
    unreadable by others even where the umask allows. If ``write`` raises, the temporary file
    is removed and ``path`` is left as it was.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "out.txt"
        >>> write_atomically(target, lambda file: file.write(b"done"), prefix=".out-")
        >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
        ('done', ['out.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f"{prefix}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(8)}.tmp"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        temporary.replace(path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
