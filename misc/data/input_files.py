"""Opening the files a user names as inputs, and quoting what they hold.

Only regular files are read: a FIFO would make ``open`` wait for a writer
for ever and a device such as ``/dev/zero`` would be read for ever, so both
are refused with one line before anything is read (``InputFileError``, a
``ValueError`` that names the file).  A value read from a file is quoted in
a message by ``short_repr``, which stays short whatever the value (a YAML
file of nested aliases expands to gigabytes when printed whole).
"""

import os
import reprlib
import stat

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 40, 40


def short_repr(value):
    """A repr of at most about a hundred characters."""
    return _REPR.repr(value)


class InputFileError(ValueError):
    """An input that is missing or not a regular file; names it."""


def describe_non_regular(mode):
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
            if stat.S_ISSOCK(mode) else "not a regular file")


def _opener(path, flags):
    fd = os.open(path, flags | os.O_NONBLOCK)  # a FIFO opens at once, without a writer
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise InputFileError(f"{path}: is {describe_non_regular(mode)}, not a file.")
    os.set_blocking(fd, True)
    return fd


def open_regular(path, mode="rb", encoding=None, errors=None):
    """``open(path, mode)`` for reading, refusing anything but a regular
    file (``InputFileError``); a missing file raises ``FileNotFoundError``."""
    return open(path, mode, encoding=encoding, errors=errors, opener=_opener)


def check_input_file(path, name):
    """Refuse, before any work, an input that is missing or not a regular
    file; ``name`` says what it is and where it came from, e.g.
    '--noise noise.npz'."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputFileError(f"{name}: not found.") from None
    except OSError as exc:
        raise InputFileError(f"{name}: cannot read it ({exc.strerror or exc}).") from None
    if not stat.S_ISREG(mode):
        raise InputFileError(f"{name}: is {describe_non_regular(mode)}, not a file.")
    if not os.access(path, os.R_OK):
        raise InputFileError(f"{name}: not readable (permission denied).")
