"""Native libraries' chatter on file descriptor 2 (TensorFlow's absl start-up lines,
LiteRT's "Created TensorFlow Lite XNNPACK delegate for CPU."), which no Python logging
setting reaches: held back while a block runs, shown only if the block fails.

The command line is quiet by default (:data:`QUIET` set by ``kvision.cli``, cleared by
``--verbose``); the library alone holds nothing back unless asked.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

QUIET = False  # set by the command line unless --verbose


@contextlib.contextmanager
def stderr_held():
    """What native code writes to file descriptor 2 while the block runs goes to a
    temporary file, written out only if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def held_when_quiet():
    """:func:`stderr_held` when :data:`QUIET`, else nothing held."""
    return stderr_held() if QUIET else contextlib.nullcontext()
