"""Reading and writing the dataset pickles without running foreign code.

A pickle can name any importable callable and make the unpickler call it, so
loading an untrusted ``*.pickle`` file is equivalent to running a program.
Dataset files (images, embeddings, filenames, class ids) only ever contain
numpy arrays and plain Python containers, strings and numbers, so the
unpickler here resolves exactly the globals that those need and refuses
everything else with an error naming the file.

Pickles written by Python 2 (the published StackGAN data) load too: their
byte strings are decoded as latin-1, which is what numpy needs to rebuild
arrays and what turns Python 2 ``str`` filenames into ``str``.
"""

import io
import pickle
import struct

import numpy as np

from misc.atomic import atomic_open

# Globals a numpy/py-container pickle may reference, keyed by (module, name).
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    # Protocol-2 pickles written by Python 3 encode bytes through this.
    ("_codecs", "encode"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "dict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "bytes"),
    ("builtins", "str"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "complex"),
    ("builtins", "bool"),
}

# numpy 2 moved numpy.core to numpy._core; old pickles name the old path.
_MODULE_ALIASES = {
    "numpy.core.multiarray": "numpy._core.multiarray",
    "numpy.core.numeric": "numpy._core.numeric",
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references something other than arrays and plain data."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path):
        super().__init__(file, encoding="latin1", fix_imports=True)
        self._path = path

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self._path}: refused to load this pickle because it references "
                f"'{module}.{name}'; dataset pickles may only contain numpy arrays "
                "and plain lists, dicts, strings and numbers. Regenerate the file "
                "from the original data (or with data/generate_shapes.py)."
            )
        module = _MODULE_ALIASES.get(module, module)
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            if module.startswith("numpy._core"):
                return super().find_class(module.replace("numpy._core", "numpy.core"), name)
            raise


def load(path):
    """Load a dataset pickle from ``path`` with the restricted unpickler.

    Raises ``FileNotFoundError`` for a missing file and ``UnsafePickleError``
    for a pickle that references anything but arrays and plain data; any other
    decoding problem is re-raised as ``pickle.UnpicklingError`` naming the file.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _RestrictedUnpickler(io.BytesIO(data), path).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated, not a pickle, wrong protocol, ...
        raise pickle.UnpicklingError(
            f"{path}: cannot read this file as a pickle ({type(exc).__name__}: {exc}). "
            "The file is damaged or is not a dataset pickle; regenerate it."
        ) from exc


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
