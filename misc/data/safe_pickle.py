"""Reading and writing the dataset pickles without running foreign code.

A pickle can name any importable callable and make the unpickler call it, so
loading an untrusted ``*.pickle`` file is equivalent to running a program.
Dataset files (images, embeddings, filenames, class ids) only ever contain
numpy arrays and plain Python containers, strings and numbers, so the
unpickler here resolves exactly the globals that those need and refuses
everything else with an error naming the file.

Pickles written by Python 2 (the published StackGAN data) load too: their
byte strings are decoded as latin-1, which is what numpy needs to rebuild
arrays and what turns Python 2 ``str`` filenames into ``str``.  So do
pickles Python 3 writes with protocols 0-2, which name the builtins the
Python 2 way (``__builtin__.set``, ``__builtin__.bytes`` ...).

A hostile file cannot make the reader allocate more than it holds: every
constructor is wrapped to accept only the arguments pickling produces
(``bytes`` from a string or a list of byte values, never from an integer
size; numpy arrays only through their state, whose data must be in the
file), arrays and dtypes get only the states numpy itself writes (numpy
crashes on some others), and the unpickler is Python's pure-Python one with
a bounded ``BYTEARRAY8`` (the C unpickler sizes its memo from an index in
the file).
"""

import codecs
import io
import math
import pickle
import struct

import numpy as np
from numpy._core import multiarray, numeric  # numpy 1.26 has these names too

from misc.data.atomic import atomic_open
from misc.data.input_files import InputFileError, open_regular, short_repr


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references something other than arrays and plain data, or
    asks for something pickling never writes."""


class _Refused(Exception):
    """Raised inside the unpickler; ``load`` names the file."""


# Encodings pickling uses for byte strings (_codecs.encode(text, 'latin1'),
# bytearray(text, 'latin-1')), by codecs' canonical name.
_BYTE_ENCODINGS = {"iso8859-1", "ascii", "utf-8"}
_CONTAINERS = (list, tuple, set, frozenset, dict, str, bytes, bytearray)


def _encoding(name):
    try:
        canonical = codecs.lookup(name).name
    except (LookupError, TypeError):
        canonical = None
    if canonical not in _BYTE_ENCODINGS:
        raise _Refused(f"it encodes a byte string as {short_repr(name)}")
    return name


def _byte_string(kind):
    """``kind`` (bytes or bytearray) from what pickling passes: nothing, a
    byte string, a text and its encoding, or a list of byte values."""

    def make(*args):
        if not args:
            return kind()
        if len(args) == 2 and isinstance(args[0], str):
            return kind(args[0], _encoding(args[1]))
        if len(args) == 1 and isinstance(args[0], (bytes, bytearray, list, tuple)):
            return kind(args[0])
        raise _Refused(f"it calls {kind.__name__}{short_repr(args)}")

    return make


def _from_container(kind):
    """``kind`` (list, set, ...) from nothing or from a container already
    read (never from a number, which some types take as a size)."""

    def make(*args):
        if not args:
            return kind()
        if len(args) == 1 and isinstance(args[0], _CONTAINERS):
            return kind(args[0])
        raise _Refused(f"it calls {kind.__name__}{short_repr(args)}")

    return make


def _scalar_of(kind, accepted):
    def make(*args):
        if len(args) > 2 or not all(isinstance(a, accepted) for a in args):
            raise _Refused(f"it calls {kind.__name__}{short_repr(args)}")
        return kind(*args)

    return make


def _encode(text, encoding="utf-8", errors="strict"):
    if not isinstance(text, str) or errors != "strict":
        raise _Refused(f"it calls _codecs.encode on a {type(text).__name__}")
    return codecs.encode(text, _encoding(encoding))


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a pickle: only ``_reconstruct`` takes
    it (calling the class itself would allocate any shape)."""

    def __call__(self, *args):
        raise _Refused(f"it calls numpy.ndarray{short_repr(args)} (an array of any size)")

    def __repr__(self):
        return "numpy.ndarray"


_NDARRAY = _NdarrayType()


def _reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` as arrays are pickled: an empty array whose
    state (shape, dtype, data) comes next."""
    if subtype is not _NDARRAY or tuple(shape) != (0,) or dtype not in (b"b", "b"):
        raise _Refused(f"it calls numpy _reconstruct{short_repr((subtype, shape, dtype))}")
    return np.ndarray.__new__(np.ndarray, (0,), "b")


_NUMBER = (int, float, str, bool)

# (module, name) -> what the pickle gets.  Python 2 names (__builtin__) are
# mapped as Python's own fix_imports maps them; numpy 2 moved numpy.core to
# numpy._core.
_ALLOWED = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): numeric._frombuffer,
    ("_codecs", "encode"): _encode,
    ("builtins", "list"): _from_container(list),
    ("builtins", "tuple"): _from_container(tuple),
    ("builtins", "dict"): _from_container(dict),
    ("builtins", "set"): _from_container(set),
    ("builtins", "frozenset"): _from_container(frozenset),
    ("builtins", "bytes"): _byte_string(bytes),
    ("builtins", "bytearray"): _byte_string(bytearray),
    ("builtins", "str"): _scalar_of(str, (str,)),
    ("builtins", "int"): _scalar_of(int, _NUMBER),
    ("builtins", "float"): _scalar_of(float, _NUMBER),
    ("builtins", "bool"): _scalar_of(bool, _NUMBER),
    ("builtins", "complex"): complex,  # a class: protocol 2 of Python 2 builds it with NEWOBJ
}
_MODULE_ALIASES = {
    "__builtin__": "builtins",
    "numpy._core.multiarray": "numpy.core.multiarray",
    "numpy._core.numeric": "numpy.core.numeric",
}
_DTYPE_ENDIAN = ("<", ">", "|", "=")
_DTYPE_ALIGNMENTS = (-1, 1, 2, 4, 8, 16)
MAX_ITEMSIZE = 2**31 - 1
MAX_DIMENSIONS = 32


def _check_dtype_state(dtype, state):
    """The states numpy writes for a plain (not structured) dtype."""
    ok = (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
          and state[1] in _DTYPE_ENDIAN and state[2:5] == (None, None, None)
          and all(isinstance(v, int) for v in state[5:8]) and state[6] in _DTYPE_ALIGNMENTS
          and 0 <= state[7] < 256)
    if ok:
        elsize = state[5]
        if dtype.kind in "SUV":
            ok = 0 <= elsize <= MAX_ITEMSIZE and (dtype.kind != "U" or elsize % 4 == 0)
        else:
            ok = elsize in (-1, dtype.itemsize)
    if not ok:
        raise _Refused(f"it gives a dtype a state numpy never writes ({short_repr(state)})")


def _check_array_state(state):
    """An array's (version, shape, dtype, fortran, data) whose data holds
    exactly the elements its shape asks for."""
    if isinstance(state, tuple) and len(state) == 5:
        state = state[1:]
    if not (isinstance(state, tuple) and len(state) == 4):
        raise _Refused(f"it gives an array a state numpy never writes ({short_repr(state)})")
    shape, dtype, _, data = state
    if not (isinstance(shape, tuple) and len(shape) <= MAX_DIMENSIONS
            and all(isinstance(n, int) and n >= 0 for n in shape) and isinstance(dtype, np.dtype)):
        raise _Refused(f"it gives an array the shape {short_repr(shape)} and dtype {short_repr(dtype)}")
    count = math.prod(shape)
    if dtype.hasobject:
        ok = isinstance(data, list) and len(data) == count
    else:
        ok = isinstance(data, (bytes, str)) and (dtype.itemsize > 0 or count == 0) and \
            len(data) == count * dtype.itemsize
    if not ok:
        raise _Refused(f"its array of shape {list(shape)} and dtype {dtype} does not hold that many elements")


class _RestrictedUnpickler(pickle._Unpickler):
    """Python's pure-Python unpickler, restricted (see the module docstring)."""

    def __init__(self, file, size):
        super().__init__(file, encoding="latin1", fix_imports=True)
        self._size = size

    def find_class(self, module, name):
        key = (_MODULE_ALIASES.get(module, module), name)
        if key not in _ALLOWED:
            raise _Refused(f"it references '{module}.{name}'")
        return _ALLOWED[key]

    def load_build(self):
        state = self.stack[-1]
        inst = self.stack[-2]
        if type(inst) is np.ndarray:
            _check_array_state(state)
        elif type(inst) is np.dtype or isinstance(inst, np.dtype):
            _check_dtype_state(inst, state)
        else:
            raise _Refused(f"it sets the state of a {type(inst).__name__}")
        self.stack.pop()
        inst.__setstate__(state)

    def load_bytearray8(self):
        (length,) = struct.unpack("<Q", self.read(8))
        if length > self._size:
            raise _Refused(f"it claims a bytearray of {length} bytes in a file of {self._size}")
        self.append(bytearray(self.read(length)))

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def load(path):
    """Load a dataset pickle from ``path`` with the restricted unpickler.

    Raises ``FileNotFoundError`` for a missing file, ``UnsafePickleError``
    for a pickle that references anything but arrays and plain data (or
    asks for what pickling never writes); any other decoding problem, and a
    path that is not a regular file, is re-raised as
    ``pickle.UnpicklingError`` naming the file.
    """
    try:
        with open_regular(path) as f:
            data = f.read()
    except InputFileError as exc:
        raise pickle.UnpicklingError(str(exc)) from None
    try:
        return _RestrictedUnpickler(io.BytesIO(data), len(data)).load()
    except _Refused as exc:
        raise UnsafePickleError(
            f"{path}: refused to load this pickle because {exc}; dataset pickles may only "
            "contain numpy arrays and plain lists, dicts, strings and numbers. Regenerate the file "
            "from the original data (or with data/generate_shapes.py)."
        ) from None
    except Exception as exc:  # truncated, not a pickle, wrong protocol, ...
        detail = " ".join(str(exc).split())[:200]
        raise pickle.UnpicklingError(
            f"{path}: cannot read this file as a pickle ({type(exc).__name__}: {detail}). "
            "The file is damaged or is not a dataset pickle; regenerate it."
        ) from None


class _Python2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes ``bytes`` as Python 2 ``str``.

    Python 3's protocol 2 routes bytes through ``_codecs.encode`` (so Python 2
    can read them), which stores every byte >= 128 in two bytes: image
    pickles grow by half.  Python 2 ``str`` opcodes store bytes as they are
    -- which is how the published StackGAN pickles hold their array data --
    and read back with ``encoding="latin1"`` (see ``load``).
    """

    def save_bytes_as_str(self, obj):
        size = len(obj)
        if size < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([size]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", size))
            self.write(obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes_as_str


def dump(obj, path):
    """Write ``obj`` to ``path`` atomically, as a protocol-2 pickle that the
    original Python 2 code can read."""
    with atomic_open(path, "wb") as f:
        _Python2Pickler(f, protocol=2).dump(obj)


def as_array(obj, path, dtype=None):
    """``np.asarray`` that names ``path`` when the contents are ragged."""
    try:
        return np.asarray(obj, dtype=dtype)
    except ValueError as exc:
        raise ValueError(
            f"{path}: the arrays in this pickle do not share one shape ({exc}); "
            "every image must have the same size. Re-run the preprocessing."
        ) from exc
