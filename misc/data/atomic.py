"""Writing files safely: atomically (a reader, or a crash, never sees half a
file), with a one-line error naming the file when a write fails, and the
tools to find out what an interrupted writer left behind.

Every output of every command goes through ``atomic_open`` (or, for a folder
built as a whole, ``atomic_folder``), which respects what the name is:

* a regular file, or a new name: written to a temporary file beside it that
  replaces it when complete (the permissions of the file it replaces are
  kept);
* a symbolic link: written through, the link kept and its target replaced
  atomically;
* a terminal, a pipe, a FIFO or another character device, and the
  descriptor links ``/dev/stdout``, ``/dev/fd/<n>``, ``/proc/<pid>/fd/<n>``:
  written in place, never replaced (a FIFO must have a reader);
* a folder, a block device, a socket or a loop of links: refused with one
  line (``WriteError``), nothing written.

A process killed while writing leaves its temporary behind
(``.tmp-<random>-<name>``).  The writer holds an advisory lock on it while
it writes, so a temporary nobody holds is a leftover: the next write of the
same name removes it (``remove_stale_temporaries``), whoever writes it.
"""

import contextlib
import errno
import glob
import os
import re
import shutil
import stat
import sys
import tempfile

from misc.config import UserError
from misc.data.input_files import describe_non_regular

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks (see exclusive_lock)
    fcntl = None

# Temporaries of atomic_open and atomic_folder: ".tmp-<8 random characters>-<target's name>"
# beside the target (tempfile's random names are 8 of [a-z0-9_]).
TEMP_PREFIX = ".tmp-"
_RANDOM = "[a-z0-9_]" * 8
# The target's name in a temporary's name is cut to this many characters (a
# file name has at most 255).
_NAME_KEPT = 200
# Links that name an open descriptor rather than a file: writing there must
# go to that descriptor (e.g. the terminal or pipe of /dev/stdout).
_DESCRIPTOR = re.compile(r"^/(?:dev|proc/(?:self|\d+))/fd/(\d+)$|^/dev/std(in|out|err)$")
_STANDARD = {"in": 0, "out": 1, "err": 2}
_MAX_LINKS = 40  # as the kernel's limit on symbolic links in one lookup


class WriteError(UserError, OSError):
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


def _own_descriptor(path):
    """The descriptor number a link such as /dev/stdout names in this
    process, following the links of ``path`` one by one; None for any other
    path."""
    current = os.path.abspath(path)
    for _ in range(_MAX_LINKS):
        match = _DESCRIPTOR.match(current)
        if match:
            if current.startswith("/proc/") and current.split("/")[2] not in ("self", str(os.getpid())):
                return None  # another process's descriptor: opened like any file
            return int(match.group(1)) if match.group(1) else _STANDARD[match.group(2)]
        if not os.path.islink(current):
            return None
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return None


def output_target(path, option=None):
    """How ``path`` is written: ``("replace", file)`` -- a regular file or a
    new name, ``file`` where its links end; ``("stream", file)`` -- a
    character device or FIFO, written in place; ``("descriptor", n)`` -- a
    link to this process's descriptor ``n``.  A folder, a block device, a
    socket or a loop of links raises a one-line ``WriteError`` (``option``:
    the command-line option that named ``path``, for the message)."""
    name = f"{option} {path}" if option else path
    if not path:
        raise WriteError(f"{option or 'output'}: no file name given.")
    descriptor = _own_descriptor(path)
    if descriptor is not None:
        return "descriptor", descriptor
    target = os.path.realpath(path)
    if os.path.islink(target):
        raise WriteError(f"{name}: a loop of symbolic links; give a file name.")
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return "replace", target
    except NotADirectoryError:
        check_folder_writable(os.path.dirname(target), name)  # names the file on the way
        raise
    except OSError as exc:
        raise WriteError(f"{name}: cannot use it ({describe_os_error(exc)}).") from None
    if stat.S_ISREG(mode):
        return "replace", target
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return "stream", target
    raise WriteError(f"{name}: is {describe_non_regular(mode)}, not written; give a file name.")


def check_writable(path, option=None):
    """Refuse, before any work, an output ``atomic_open`` could not write:
    what ``output_target`` refuses, a read-only file or device, a folder on
    the way that is a file, or one the process may not write in.  Writes
    nothing."""
    name = f"{option} {path}" if option else path
    kind, target = output_target(path, option)
    if kind == "descriptor":
        try:
            writable = fcntl is None or fcntl.fcntl(target, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
        except OSError:
            writable = False
        if not writable:
            raise WriteError(f"{name}: descriptor {target} is not open for writing in this process.")
        return
    if kind == "stream" or os.path.exists(target):
        if not os.access(target, os.W_OK):
            raise WriteError(f"{name}: not writable (permission denied); give another file.")
        if kind == "stream":
            return
    check_folder_writable(os.path.dirname(target), name)


def check_not_input(path, inputs, option):
    """Refuse an output that is one of the command's ``inputs`` (paths;
    compared where their links end): writing it would destroy that input."""
    target = os.path.realpath(path)
    for given in inputs:
        if given and os.path.realpath(given) == target:
            raise WriteError(f"{option} {path}: is {given}, an input of this command; writing it would "
                             "destroy that input. Give another file.")


def check_folder_writable(folder, name=None):
    """The nearest existing folder of ``folder`` (it and the missing ones
    below it are created when written) must be a folder the process may
    create files in."""
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        if os.path.islink(existing):
            raise WriteError(f"{name or folder}: {existing} is a symbolic link to a missing folder.")
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise WriteError(f"{name or folder}: {existing} is not a folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WriteError(f"{name or folder}: cannot create files in {existing} (permission denied or "
                         "a read-only file system).")


@contextlib.contextmanager
def _stream(kind, target, path, mode, encoding):
    """Write to a device, FIFO or descriptor in place (see the module docstring)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # what was printed before comes first
    try:
        if kind == "descriptor":
            fd = os.dup(target)
        else:  # O_NONBLOCK: a FIFO nobody reads is an error, not a hang
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
            os.set_blocking(fd, True)
        f = os.fdopen(fd, mode.replace("w", "a"), encoding=encoding)
    except OSError as exc:
        why = ("nothing reads from this FIFO; start its reader first" if exc.errno == errno.ENXIO
               else describe_os_error(exc))
        raise WriteError(f"{path}: could not write to it ({why}).") from None
    try:
        with f:
            yield f
    except OSError as exc:
        if isinstance(exc, WriteError):
            raise
        raise WriteError(f"{path}: could not write to it ({describe_os_error(exc)}).") from exc


def _temporary_patterns(target):
    """Glob patterns of the temporaries of ``target``: ours, and those of
    earlier versions, which wrote ".tmp-<random><target's extension>"."""
    folder = glob.escape(os.path.dirname(target))
    name = os.path.basename(target)
    return [os.path.join(folder, f"{TEMP_PREFIX}{_RANDOM}-{glob.escape(name[:_NAME_KEPT])}"),
            os.path.join(folder, f"{TEMP_PREFIX}{_RANDOM}{glob.escape(os.path.splitext(name)[1])}")]


def _locked(fd):
    """Take the advisory lock on ``fd`` without waiting; whether it was free."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def remove_stale_temporaries(target):
    """Remove the temporaries an earlier, killed writer of ``target`` left
    beside it (files or folders nobody holds the lock of); returns their
    paths.  A temporary whose writer still runs is left alone, and so is
    everything in a folder where nothing can be removed (read-only)."""
    removed = []
    for path in sorted({p for pattern in _temporary_patterns(target) for p in glob.glob(pattern)}):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # a link, gone meanwhile, unreadable: not ours to touch
        try:
            if not _locked(fd):
                continue
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed.append(path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _temporary_suffix(target):
    return "-" + os.path.basename(target)[:_NAME_KEPT]


def _new_file(target):
    fd, path = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=_temporary_suffix(target),
                                dir=os.path.dirname(target))
    os.close(fd)
    return path


def _hold(make):
    """Create a temporary with ``make()`` -> path and hold its lock; returns
    (path, descriptor).  A temporary removed between its creation and the
    lock (by ``remove_stale_temporaries`` of another process) is made anew."""
    while True:
        path = make()
        fd = os.open(path, os.O_RDONLY)
        if _locked(fd):
            try:
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    return path, fd
            except FileNotFoundError:
                pass
        os.close(fd)


def _write_error(path, exc):
    return WriteError(f"{path}: could not write it ({describe_os_error(exc)}); any previous version "
                      "is intact.")


@contextlib.contextmanager
def atomic_open(path, mode="wb", encoding=None):
    """Open ``path`` for writing as the module docstring says: for a regular
    file (or a new one, or a link's target) a temporary beside it that
    replaces it on success (with the permissions a plain ``open`` would
    have given it) and is removed on failure, leaving ``path`` as it was.
    An OSError on the way (disk full, no permission) becomes a
    ``WriteError`` naming ``path``."""
    kind, target = output_target(path)
    if kind != "replace":
        with _stream(kind, target, path, mode, encoding) as f:
            yield f
        return
    directory = os.path.dirname(target)
    tmp = fd = None
    try:
        if os.path.exists(target) and not os.access(target, os.W_OK):
            raise WriteError(f"{path}: not writable (permission denied); not replaced.")
        os.makedirs(directory, exist_ok=True)
        remove_stale_temporaries(target)
        tmp, fd = _hold(lambda: _new_file(target))
        try:
            permissions = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            permissions = 0o666 & ~_UMASK
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, permissions)
        os.replace(tmp, target)
        tmp = None
    except WriteError:
        raise
    except OSError as exc:
        raise _write_error(path, exc) from exc
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def atomic_folder(path):
    """Build a folder that appears at ``path`` complete or not at all: the
    block fills the temporary folder it is given (beside ``path``, or beside
    the folder a link ``path`` names), which is renamed to ``path`` when the
    block succeeds and removed when it fails.  ``path`` must not exist or be
    an empty folder (``WriteError`` otherwise, nothing written)."""
    target = os.path.realpath(path)
    if os.path.islink(target):
        raise WriteError(f"{path}: a loop of symbolic links; give a folder name.")
    if os.path.exists(target):
        if not os.path.isdir(target):
            raise WriteError(f"{path}: is not a folder; give a folder name.")
        if os.listdir(target):
            raise WriteError(f"{path}: exists and is not empty; give a new folder or remove it first.")
    parent = os.path.dirname(target)
    tmp = fd = None
    try:
        os.makedirs(parent, exist_ok=True)
        remove_stale_temporaries(target)
        tmp, fd = _hold(lambda: tempfile.mkdtemp(prefix=TEMP_PREFIX, suffix=_temporary_suffix(target),
                                                 dir=parent))
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        try:
            os.rename(tmp, target)  # an empty folder at target is replaced, any other is refused
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise WriteError(f"{path}: appeared meanwhile and is not an empty folder; nothing "
                                 "written.") from None
            raise
        tmp = None
    except WriteError:
        raise
    except OSError as exc:
        raise _write_error(path, exc) from exc
    finally:
        if tmp is not None and os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if fd is not None:
            os.close(fd)


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
