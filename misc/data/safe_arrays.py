"""Reading ``.npy`` and ``.npz`` files that may be hostile or damaged.

An array file states its shape and dtype in a header, and numpy allocates
what the header asks before reading the data; an ``.npz`` member is
deflated, so a few kilobytes can expand to gigabytes.  Here every header is
read and checked first: no object arrays (they would need pickle), data no
larger than the caller's limit and than what the file holds.  A damaged
file (not a zip, a bad CRC, data that ends early) is an ``ArrayFileError``
(a ``ValueError``) naming the file, never a traceback; a missing one
raises ``FileNotFoundError``.
"""

import os
import zipfile
import zlib

import numpy as np

from misc.data.input_files import open_regular

MAX_MEMBERS = 64  # arrays in one .npz file
NPY_SUFFIX = ".npy"


class ArrayFileError(ValueError):
    """An array file that cannot be read within the limits; names the file."""


def _read_header(f):
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"npy format version {version[0]}.{version[1]}, not 1.0 or 2.0")


def _read_array(f, name, max_bytes, size):
    """One array from ``f`` (positioned at its header) whose data must fit
    ``max_bytes`` and the ``size`` bytes the file or member holds; returns
    it and the bytes read."""
    start = f.tell()
    shape, fortran, dtype = _read_header(f)
    if dtype.hasobject:
        raise ArrayFileError(f"{name}: holds Python objects (dtype {dtype}); only numeric and text "
                             "arrays are read.")
    count = 1
    for n in shape:
        count *= n
    nbytes = count * dtype.itemsize
    if nbytes > max_bytes:
        raise ArrayFileError(f"{name}: an array of shape {list(shape)} ({nbytes:,} bytes), more than the "
                             f"{max_bytes:,} bytes it may have here.")
    header = f.tell() - start
    if nbytes > size - header:
        raise ArrayFileError(f"{name}: its header asks for {nbytes:,} bytes of data but the file holds "
                             f"{size:,} bytes in all; it is damaged or truncated.")
    data = bytearray(nbytes)
    if f.readinto(data) != nbytes:
        raise ArrayFileError(f"{name}: its data ends early; it is damaged or truncated.")
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran else "C"), header + nbytes


def _damaged(path, exc):
    if isinstance(exc, ArrayFileError):
        return exc
    detail = " ".join(str(exc).split())[:200]
    return ArrayFileError(f"{path}: damaged or not a numpy file ({type(exc).__name__}: {detail}).")


def load_npy(path, max_bytes):
    """The array of an ``.npy`` file, its data at most ``max_bytes``."""
    try:
        with open_regular(path) as f:
            return _read_array(f, path, max_bytes, os.fstat(f.fileno()).st_size)[0]
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise _damaged(path, exc) from None


def load_npz(path, max_bytes, names=None):
    """{name: array} of an ``.npz`` file (only the arrays ``names`` when
    given; the others are not read), all data together at most
    ``max_bytes``."""
    arrays, total = {}, 0
    try:
        with open_regular(path) as raw, zipfile.ZipFile(raw) as archive:
            members = archive.infolist()
            if len(members) > MAX_MEMBERS:
                raise ArrayFileError(f"{path}: {len(members)} members; an .npz of arrays has at most "
                                     f"{MAX_MEMBERS} here.")
            for member in members:
                if not member.filename.endswith(NPY_SUFFIX):
                    raise ArrayFileError(f"{path}: member {member.filename!r:.60} is not an array "
                                         f"({NPY_SUFFIX}); not an .npz of arrays.")
                if names is not None and member.filename[:-len(NPY_SUFFIX)] not in names:
                    continue
                name = f"{path} ({member.filename})"
                with archive.open(member) as f:
                    array, read = _read_array(f, name, max_bytes - total, member.file_size)
                    if read != member.file_size or f.read(1):  # the end: its CRC is checked there
                        raise ArrayFileError(f"{name}: holds more than its array; it is damaged.")
                arrays[member.filename[:-len(NPY_SUFFIX)]] = array
                total += array.nbytes
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
        raise _damaged(path, exc) from None
    return arrays
