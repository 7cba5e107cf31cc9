"""Writing files safely: atomically (a reader, or a crash, never sees half a
file), with a one-line error naming the file when a write fails, and the
tools to find out what an interrupted writer left behind."""

import contextlib
import os
import tempfile

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks (see exclusive_lock)
    fcntl = None

# Temporary files of atomic_open: ".tmp-<random><extension>" beside the target.
TEMP_PREFIX = ".tmp-"


class WriteError(OSError):
    """A file could not be written (disk full, permissions, ...); the message
    names the file and the cause, and the previous version is intact."""


def _read_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once, at import: os.umask can only be read by setting it, which would
# race with files created by other threads.
_UMASK = _read_umask()


def describe_os_error(exc):
    """'No space left on device' rather than '[Errno 28] ...: path'."""
    return exc.strerror or str(exc) or type(exc).__name__


@contextlib.contextmanager
def atomic_open(path, mode="wb", encoding=None):
    """Open a temporary file beside ``path``; on success it replaces ``path``
    (with the permissions a plain ``open`` would have given it), on failure
    it is removed and ``path`` is left as it was.  An OSError on the way
    (disk full, no permission) becomes a ``WriteError`` naming ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=os.path.splitext(path)[1], dir=directory)
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise WriteError(f"{path}: could not write it ({describe_os_error(exc)}); "
                             "any previous version is intact.") from exc
        raise


def write_text(text, path):
    """Write a UTF-8 text file atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def remove_temporaries(directory, recursive=False):
    """Remove the temporary files ``atomic_open`` leaves when its process is
    killed mid-write (``.tmp-*`` files) in ``directory`` (and below it).
    Only call this while no other process writes there (``exclusive_lock``).
    Returns the removed paths."""
    removed = []
    walk = os.walk(directory) if recursive else [(directory, None, _listdir(directory))]
    for root, _, names in walk:
        for name in names:
            path = os.path.join(root, name)
            if name.startswith(TEMP_PREFIX) and os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)
                removed.append(path)
    return removed


def _listdir(directory):
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def exclusive_lock(path, blocking=True):
    """Hold an advisory lock on the file ``path`` (created if needed) for the
    duration of the block; yields whether it was acquired (always True when
    ``blocking``).  The operating system releases it when the process ends,
    however it ends, so a lock never outlives its holder.  Without ``fcntl``
    (not POSIX) nothing is locked and True is yielded."""
    if fcntl is None:
        yield True
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            acquired = True
        except BlockingIOError:
            acquired = False
        try:
            yield acquired
        finally:
            if acquired:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
