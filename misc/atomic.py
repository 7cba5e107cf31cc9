"""Writing files atomically: a reader (or a crash) never sees half a file."""

import contextlib
import os
import tempfile


def _read_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import: os.umask can only be read by setting it, which would
# race with files created by other threads.
_UMASK = _read_umask()


@contextlib.contextmanager
def atomic_open(path, mode="wb", encoding=None):
    """Open a temporary file beside ``path``; on success it replaces ``path``
    (with the permissions a plain ``open`` would have given it), on failure
    it is removed and ``path`` is left as it was."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(text, path):
    """Write a UTF-8 text file atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
