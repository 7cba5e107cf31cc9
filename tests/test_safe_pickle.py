"""misc/data/safe_pickle.py against hostile and legitimate files (issue 24).

Hostile: tiny crafted pickles that would make a plain unpickler allocate
gigabytes (``bytes(2e9)``, a memo index of 2**28, a BYTEARRAY8 claiming a
terabyte, numpy arrays whose shape is not backed by data) or crash numpy (an
object array whose element list is shorter than its shape) are refused with
one line naming the file, in a process limited to 1 GB of address space.
Legitimate: what Python 3 writes with every protocol for the allowed types
(protocols 0-2 name them the Python 2 way, ``__builtin__.set`` ...) loads
back equal; everything else is still refused.
"""

import json
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from misc.config import DatasetError
from misc.data import safe_pickle
from misc.data.datasets import class_id_array, file_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P2, P4, P5 = b"\x80\x02", b"\x80\x04", b"\x80\x05"
TWO_BILLION = b"J\x00\x94\x35\x77"  # BININT 2,000,000,000


def crafted_files():
    """name -> bytes of each hostile pickle (opcodes written by hand)."""
    empty_object_array = pickle.dumps(np.array([1, None], dtype=object), protocol=2)
    long_array = pickle.dumps(np.zeros(2, np.float64), protocol=2)
    return {
        "bytes_from_size.pickle": P2 + b"c__builtin__\nbytes\n" + TWO_BILLION + b"\x85R.",
        "bytes_from_size_py3.pickle": P4 + b"cbuiltins\nbytes\n" + TWO_BILLION + b"\x85R.",
        "bytearray_from_size.pickle": P2 + b"c__builtin__\nbytearray\n" + TWO_BILLION + b"\x85R.",
        "memo_index.pickle": P2 + b"Nr\x00\x00\x00\x10N.",  # LONG_BINPUT 2**28
        "bytearray8_claim.pickle": P5 + b"\x96" + struct.pack("<Q", 2**40) + b"ab.",
        "ndarray_called.pickle": P2 + b"cnumpy\nndarray\n" + b"J\x00\xe1\xf5\x05\x85R.",
        "reconstruct_shape.pickle": P2 + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
                                    + b"J\x00\xe1\xf5\x05\x85U\x01b\x87R.",
        # the element list is shorter than the shape: numpy itself crashes (segfault)
        "object_array_short.pickle": empty_object_array.replace(b"K\x02\x85", b"J\x40\x42\x0f\x00\x85"),
        # shape 10**8 float64, data for 2
        "array_data_short.pickle": long_array.replace(b"K\x02\x85", b"J\x00\xe1\xf5\x05\x85"),
        "dtype_negative_size.pickle": P2 + b"cnumpy\ndtype\nX\x02\x00\x00\x00V8\x89\x88\x87R"
                                      + b"(K\x03X\x01\x00\x00\x00|NNNJ\xfb\xff\xff\xffK\x01K\x00tb.",
        "state_of_a_list.pickle": P2 + b"]}b.",
        "eval_py2_name.pickle": P2 + b"c__builtin__\neval\nX\x06\x00\x00\x001 + 1 \x85R.",
        "getattr.pickle": P2 + b"cbuiltins\ngetattr\n.",
        "codecs_other_encoding.pickle": P2 + b"c_codecs\nencode\nX\x01\x00\x00\x00x"
                                        + b"X\x04\x00\x00\x00zlib\x86R.",
    }


LOADER = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from misc.data import safe_pickle
out = {}
for path in sys.argv[1:]:
    try:
        safe_pickle.load(path)
        out[path] = ["loaded", ""]
    except Exception as exc:
        out[path] = [type(exc).__name__, str(exc)]
print(json.dumps(out))
"""


def test_crafted_pickles_are_refused_without_allocating(tmp_path):
    paths = []
    for name, data in crafted_files().items():
        (tmp_path / name).write_bytes(data)
        assert len(data) < 300
        paths.append(str(tmp_path / name))
    env = {**os.environ, "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-c", LOADER, *paths], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout)
    expected = {
        "bytes_from_size.pickle": "it calls bytes(2000000000,)",
        "bytes_from_size_py3.pickle": "it calls bytes(2000000000,)",
        "bytearray_from_size.pickle": "it calls bytearray(2000000000,)",
        "memo_index.pickle": None,  # a memo entry costs nothing: loads (None)
        "bytearray8_claim.pickle": "claims a bytearray of 1099511627776 bytes",
        "ndarray_called.pickle": "it calls numpy.ndarray(100000000,)",
        "reconstruct_shape.pickle": "it calls numpy _reconstruct(numpy.ndarray, (100000000,), 'b')",
        "object_array_short.pickle": "shape [1000000] and dtype object does not hold",
        "array_data_short.pickle": "shape [100000000] and dtype float64 does not hold",
        "dtype_negative_size.pickle": "a state numpy never writes",
        "state_of_a_list.pickle": "it sets the state of a list",
        "eval_py2_name.pickle": "it references '__builtin__.eval'",
        "getattr.pickle": "it references 'builtins.getattr'",
        "codecs_other_encoding.pickle": "it encodes a byte string as 'zlib'",
    }
    for name, message in expected.items():
        kind, text = outcome[str(tmp_path / name)]
        if message is None:
            assert kind == "loaded", (name, text)
            continue
        assert kind == "UnsafePickleError", (name, kind, text)
        assert text.startswith(str(tmp_path / name) + ": refused") and "\n" not in text, text
        assert message in text, (name, text)


def test_what_python_3_writes_loads_with_every_protocol(tmp_path):
    values = [b"ab\xff", b"", {1, 2}, frozenset(["x"]), set(), bytearray(b"x\xff"), bytearray(),
              1 + 2j, "text", 3, 2.5, True, None, [1, [2]], (1, "a"), {"k": (1, 2)},
              np.zeros((0,), np.float32), np.zeros((0, 3), np.uint8),
              np.arange(6, dtype=np.int64).reshape(2, 3),
              np.array(["ab", "c"]), np.array([b"ab"]), np.array([1, "a", None], dtype=object),
              np.float32(1.5), np.int64(-7), np.asfortranarray(np.arange(6.0).reshape(2, 3))]
    path = str(tmp_path / "value.pickle")
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for value in values:
            with open(path, "wb") as f:
                pickle.dump(value, f, protocol=protocol)
            loaded = safe_pickle.load(path)
            assert type(loaded) is type(value), (protocol, value, loaded)
            if isinstance(value, np.ndarray):
                assert loaded.dtype == value.dtype and loaded.shape == value.shape, (protocol, value)
                assert loaded.tolist() == value.tolist(), (protocol, value)
            else:
                assert loaded == value, (protocol, value, loaded)
    # protocols 0-2 name the builtins the Python 2 way, which the unpickler maps
    assert b"c__builtin__\nset" in pickle.dumps({1}, protocol=2)
    assert b"c__builtin__\nbytes" in pickle.dumps(np.zeros(0), protocol=2)


def test_other_code_is_still_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "x.pickle"
    for protocol in (0, 2, 4):
        path.write_bytes(pickle.dumps([Evil()], protocol=protocol))
        with pytest.raises(safe_pickle.UnsafePickleError, match="references 'posix.system'"):
            safe_pickle.load(str(path))


def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "fifo.pickle"
    os.mkfifo(fifo)  # an open() would wait for a writer for ever
    for path in (str(fifo), "/dev/zero", str(tmp_path)):
        with pytest.raises(pickle.UnpicklingError) as info:
            safe_pickle.load(path)
        assert str(info.value).startswith(f"{path}: is a ") and "not a file" in str(info.value)


def test_a_deeply_nested_pickle_is_named_in_one_line_by_the_dataset_checks(tmp_path):
    """200,000 nested lists in 400 kB: quoting one in a message must not
    recurse (the repr of it did)."""
    depth = 200_000
    path = tmp_path / "filenames.pickle"
    path.write_bytes(P2 + b"]" * depth + b"a" * (depth - 1) + b".")
    nested = safe_pickle.load(str(path))
    for check, message in ((file_names, "entry 0 ([[[...]]]) is a list, not a string"),
                           (class_id_array, "entry 0 is [[[...]]]; expected integer class ids")):
        with pytest.raises(DatasetError) as info:
            check(nested, str(path))
        assert message in str(info.value) and "\n" not in str(info.value)
