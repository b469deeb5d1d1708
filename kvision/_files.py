"""Writing files so that a reader, or a run killed mid-write, sees the old file or the
new one, never half of one: through a temporary file beside the target, then a rename."""

from __future__ import annotations

import contextlib
import os
import tempfile


def write_text_atomically(path, text):
    """Write ``text`` (UTF-8) to ``path``, creating its folder; returns ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return path
