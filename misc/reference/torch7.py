"""A reader and a small writer for torch7 binary serialisation files
(``torch.save``), without Lua or the ``torchfile`` package.

What is read:

  * nil, numbers (Lua doubles), strings, booleans;
  * tables (returned as ``dict``; shared references are preserved, so a table
    or tensor met twice is the same Python object; a key that is itself a
    table or a tensor is wrapped in ``TableKey``, compared by identity as Lua
    does);
  * tensors and storages of the CPU types ``torch.{Double,Float,Half,Byte,
    Char,Short,Int,Long}Tensor`` and the CUDA types ``torch.Cuda*Tensor``
    (``torch.CudaTensor`` is float), which the authors' files hold because
    their networks ran on GPUs.  A storage is a read-only numpy array over
    the file's bytes; a tensor is a read-only view of its storage (no copy,
    as in torch: tensors that share a storage share memory);
  * Lua functions (``TYPE_FUNCTION`` and the recursive function records,
    e.g. the ``accUpdateGradParameters`` that old ``nn.Module:share`` left in
    shared modules), returned as ``LuaFunction`` with the bytecode and the
    upvalues, never run;
  * any other torch class written as a table of fields (``nn`` modules,
    ``nngraph`` nodes and the like), returned as ``TorchObject``.

Layout of the format (little-endian, ``long`` = 8 bytes as written on 64-bit
Linux): each object starts with an int32 type code; strings are an int32
length and the bytes; tables, torch objects and recursive functions carry an
int32 reference index (a repeated index refers to an object read before),
tables then an int32 entry count and the key/value objects; torch objects a
version string ``"V <n>"`` and the class name, then the class's own data: a
tensor is int32 ``ndim``, ``ndim`` longs of sizes, of strides, a 1-based long
storage offset and its storage object; a storage is a long element count and
the raw elements; a function an int32 bytecode length, the bytecode and a
table of upvalues.

Untrusted files: everything is bounded before it is allocated.  String,
storage and table sizes are checked against the bytes left in the file;
tensors against their storage (every element inside it), a number of
dimensions (``MAX_DIMENSIONS``) and an element budget for all tensors of a
file together (``view_budget``), which bounds what a caller can allocate by
copying them, however many views a small file repeats (zero strides) or
stacks on one storage.  The reader is iterative, so nesting depth costs no
Python recursion; it is capped at ``MAX_NESTING``.  A file that breaks any
rule is a ``Torch7Error`` naming it.
"""

import itertools
import math
import reprlib
import struct

import numpy as np

from misc.data.atomic import atomic_open

TYPE_NIL = 0
TYPE_NUMBER = 1
TYPE_STRING = 2
TYPE_TABLE = 3
TYPE_TORCH = 4
TYPE_BOOLEAN = 5
TYPE_FUNCTION = 6
TYPE_RECUR_FUNCTION = 8
LEGACY_TYPE_RECUR_FUNCTION = 7
INT_SIZE = 4
# Deepest nesting of tables / torch objects / functions read.  Lua writes a
# network's graph by following its node links, so a recurrent net of a few
# hundred nodes nests a thousand levels and more; torch's own (recursive)
# reader and writer limit real files far below this.
MAX_NESTING = 10_000
# Most dimensions a tensor may have (torch's CUDA kernels take at most 25).
MAX_DIMENSIONS = 25
# All tensors of a file together may view at most this many elements plus
# VIEW_ELEMENTS_PER_BYTE per byte of the file (see view_budget).
VIEW_ELEMENTS_BASE = 1 << 20
VIEW_ELEMENTS_PER_BYTE = 8

# torch class-name prefix -> numpy element type
ELEMENT_TYPES = {
    "Double": "<f8", "Float": "<f4", "Half": "<f2", "Byte": "u1", "Char": "i1",
    "Short": "<i2", "Int": "<i4", "Long": "<i8",
    "Cuda": "<f4", "CudaDouble": "<f8", "CudaHalf": "<f2", "CudaByte": "u1", "CudaChar": "i1",
    "CudaShort": "<i2", "CudaInt": "<i4", "CudaLong": "<i8",
}
# numpy element type -> the CPU class prefix the writer uses
CLASS_OF_DTYPE = {np.dtype(ELEMENT_TYPES[name]): name
                  for name in ("Double", "Float", "Half", "Byte", "Char", "Short", "Int", "Long")}


class Torch7Error(ValueError):
    """The file is not a torch7 binary file this reader understands."""


class TorchObject:
    """An instance of a torch class other than tensors and storages, as the
    table of its fields (``obj.fields``; fields are also attributes)."""

    def __init__(self, typename, fields, version=0):
        self.typename = typename
        self.fields = fields
        self.version = version

    def __getattr__(self, name):
        fields = self.__dict__.get("fields") or {}
        if name in fields:
            return fields[name]
        raise AttributeError(name)

    def __repr__(self):
        return f"TorchObject({self.typename}, {sorted(map(str, self.fields))})"


class LuaFunction:
    """A serialised Lua function: its bytecode (never run) and upvalues."""

    def __init__(self, bytecode, upvalues=None):
        self.bytecode = bytecode
        self.upvalues = upvalues

    def __repr__(self):
        return f"LuaFunction({len(self.bytecode)} bytes of bytecode)"


class TableKey:
    """A table key that is itself a table or a tensor; equal to another only
    when both wrap the same object (Lua compares such keys by identity)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, TableKey) and other.value is self.value

    def __hash__(self):
        return id(self.value)

    def __repr__(self):
        return f"TableKey({type(self.value).__name__} at {id(self.value):#x})"


def printable(text):
    """``text`` with every unprintable character (a newline, say) as '?'."""
    return "".join(c if c.isprintable() else "?" for c in text)


def shown(value, limit=80):
    """A value read from a file, for a one-line message: printable and at
    most ``limit`` characters (a file's strings can be anything)."""
    text = printable((value if isinstance(value, str) else reprlib.repr(value))[:limit + 1])
    return text if len(text) <= limit else text[:limit - 3] + "..."


def view_budget(num_bytes):
    """How many tensor elements a file of ``num_bytes`` bytes may view in all."""
    return VIEW_ELEMENTS_BASE + VIEW_ELEMENTS_PER_BYTE * num_bytes


def _split_class(typename):
    """'torch.FloatTensor' -> ('Float', 'Tensor'); None for other classes."""
    if not typename.startswith("torch."):
        return None
    name = typename[len("torch."):]
    for kind in ("Tensor", "Storage"):
        if name.endswith(kind) and name[:-len(kind)] in ELEMENT_TYPES:
            return name[:-len(kind)], kind
    return None


def _table_key(key):
    if isinstance(key, float) and key.is_integer():
        return int(key)
    if isinstance(key, (dict, np.ndarray)):
        return TableKey(key)
    return key


# -- the reader's frames: containers whose children are still being read -------

class _TableFrame:
    def __init__(self, table, size):
        self.result, self.remaining, self.key, self.has_key = table, size, None, False

    def feed(self, value, reader):
        if not self.has_key:
            self.key, self.has_key = _table_key(value), True
            return False
        self.result[self.key] = value
        self.has_key = False
        self.remaining -= 1
        return self.remaining == 0


class _FieldsFrame:
    """A torch object of another class: its table of fields follows."""

    def __init__(self, obj):
        self.result = obj

    def feed(self, value, reader):
        if not isinstance(value, dict):
            reader.fail(f"{shown(self.result.typename)}: expected a table of fields")
        self.result.fields = value
        return True


class _FunctionFrame:
    """A Lua function: its table of upvalues follows."""

    def __init__(self, function):
        self.result = function

    def feed(self, value, reader):
        self.result.upvalues = value
        return True


class _TensorFrame:
    """A tensor: its storage object follows."""

    def __init__(self, index, dtype, typename, sizes, strides, offset):
        self.index, self.dtype, self.typename = index, dtype, typename
        self.sizes, self.strides, self.offset = sizes, strides, offset
        self.result = None

    def feed(self, value, reader):
        self.result = reader.tensor_view(self, value)
        reader.objects[self.index] = self.result
        return True


class _Reader:
    def __init__(self, data, long_size=8, source="<bytes>"):
        if long_size not in (4, 8):
            raise ValueError("long_size must be 4 or 8")
        self.data = memoryview(data)
        self.pos = 0
        self.long_format = "<q" if long_size == 8 else "<i"
        self.long_size = long_size
        self.source = source
        self.objects = {}
        self.storages = set()  # ids of the storages read (kept alive in objects)
        self.view_elements_left = view_budget(len(self.data))

    def fail(self, message):
        raise Torch7Error(printable(f"{self.source}: {message} (at byte {self.pos}); "
                                    "not a torch7 binary file this reader supports"))

    @property
    def left(self):
        return len(self.data) - self.pos

    def take(self, size):
        if size < 0 or size > self.left:
            self.fail(f"truncated: needs {size} more bytes, {self.left} left")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def int(self):
        return struct.unpack("<i", self.take(INT_SIZE))[0]

    def long(self):
        return struct.unpack(self.long_format, self.take(self.long_size))[0]

    def longs(self, count):
        return list(struct.unpack(f"<{count}{self.long_format[1]}", self.take(count * self.long_size)))

    def double(self):
        return struct.unpack("<d", self.take(8))[0]

    def raw_string(self):
        size = self.int()
        if size < 0:
            self.fail(f"negative string length {size}")
        return bytes(self.take(size))

    def string(self):
        return self.raw_string().decode("utf-8", errors="replace")

    def read(self):
        """The next object, read without recursion: containers whose children
        are pending wait on ``frames``."""
        frames = []
        while True:
            value, complete = self.begin(frames)
            while complete:
                if not frames:
                    return value
                if not frames[-1].feed(value, self):
                    break
                value = frames.pop().result
            if len(frames) > MAX_NESTING:
                self.fail(f"objects nested deeper than {MAX_NESTING} levels")

    def begin(self, frames):
        """Read one object's header: (value, True) for a complete object, or
        (None, False) after pushing the frame that waits for its children."""
        code = self.int()
        if code == TYPE_NIL:
            return None, True
        if code == TYPE_NUMBER:
            return self.double(), True
        if code == TYPE_STRING:
            return self.string(), True
        if code == TYPE_BOOLEAN:
            return self.int() == 1, True
        if code == TYPE_FUNCTION:  # no reference index in this old record
            frames.append(_FunctionFrame(LuaFunction(self.raw_string())))
            return None, False
        if code not in (TYPE_TABLE, TYPE_TORCH, TYPE_RECUR_FUNCTION, LEGACY_TYPE_RECUR_FUNCTION):
            self.fail(f"unknown object type code {code}")
        index = self.int()
        if index in self.objects:
            return self.objects[index], True
        if code == TYPE_TABLE:
            return self.table(index, frames)
        if code == TYPE_TORCH:
            return self.torch_object(index, frames)
        function = LuaFunction(self.raw_string())
        self.objects[index] = function
        frames.append(_FunctionFrame(function))
        return None, False

    def table(self, index, frames):
        table = {}
        self.objects[index] = table
        size = self.int()
        if size < 0 or size * 2 * INT_SIZE > self.left:  # each key and value takes a type code at least
            self.fail(f"table of {size} entries in the {self.left} bytes left")
        if size == 0:
            return table, True
        frames.append(_TableFrame(table, size))
        return None, False

    def version_number(self, version):
        try:
            number = float(version[2:])
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            self.fail(f"bad version string {shown(version)!r}")
        return int(number)

    def torch_object(self, index, frames):
        version = self.string()
        if version.startswith("V "):
            version_number = self.version_number(version)
            typename = self.string()
        else:  # files written before torch7 versioned its classes
            typename, version_number = version, 0
        parts = _split_class(typename)
        if parts is None:
            obj = TorchObject(typename, {}, version_number)
            self.objects[index] = obj
            frames.append(_FieldsFrame(obj))
            return None, False
        element, kind = parts
        dtype = np.dtype(ELEMENT_TYPES[element])
        if kind == "Storage":
            size = self.long()
            if size < 0 or size * dtype.itemsize > self.left:
                self.fail(f"{typename} of {size} elements in the {self.left} bytes left")
            array = np.frombuffer(self.take(size * dtype.itemsize), dtype=dtype)  # no copy: read-only
            self.objects[index] = array
            self.storages.add(id(array))
            return array, True
        ndim = self.int()
        if not 0 <= ndim <= MAX_DIMENSIONS:
            self.fail(f"{typename}: {ndim} dimensions; at most {MAX_DIMENSIONS} are supported")
        sizes = self.longs(ndim)
        strides = self.longs(ndim)
        offset = self.long() - 1  # stored 1-based
        frames.append(_TensorFrame(index, dtype, typename, sizes, strides, offset))
        return None, False

    def tensor_view(self, header, storage):
        """The tensor of ``header`` as a read-only view of ``storage``, after
        checking that it stays inside it and within the view budget."""
        typename, sizes, strides, offset = header.typename, header.sizes, header.strides, header.offset
        if not sizes or storage is None:
            return np.zeros((0,), header.dtype)
        if id(storage) not in self.storages or storage.dtype != header.dtype:
            self.fail(f"{typename}: its storage is not a {typename[:-len('Tensor')]}Storage")
        if min(sizes) < 0 or min(strides) < 0 or offset < 0:
            self.fail(f"{typename}: negative size, stride or offset (sizes {sizes}, strides {strides}, "
                      f"offset {offset + 1})")
        count = math.prod(sizes)
        if count > self.view_elements_left:
            self.fail(f"{typename}: sizes {sizes} make {count} elements, beyond what a file of "
                      f"{len(self.data)} bytes may hold ({view_budget(len(self.data))} in all tensors)")
        self.view_elements_left -= count
        if count == 0:
            return np.zeros(sizes, header.dtype)
        strides = [s if n > 1 else 0 for n, s in zip(sizes, strides)]
        last = offset + sum((n - 1) * s for n, s in zip(sizes, strides))
        if last >= storage.size:
            self.fail(f"{typename}: sizes {sizes} / strides {strides} / offset {offset + 1} run past its "
                      f"storage of {storage.size} elements")
        return np.lib.stride_tricks.as_strided(
            storage[offset:], shape=sizes, strides=[s * header.dtype.itemsize for s in strides],
            writeable=False)


def loads(data, long_size=8, source="<bytes>"):
    """Decode one torch7 object from ``data`` (bytes)."""
    return _Reader(data, long_size, source).read()


def load(path, long_size=8):
    """Read the object a ``torch.save(path, obj)`` call wrote (binary mode)."""
    with open(path, "rb") as f:
        data = f.read()
    return loads(data, long_size, source=path)


def as_list(table):
    """A Lua array-like table ``{1: a, 2: b, ...}`` as a Python list
    (a list is returned unchanged); raises ``Torch7Error`` otherwise."""
    if isinstance(table, list):
        return table
    if not isinstance(table, dict):
        raise Torch7Error(f"expected a Lua table, got {type(table).__name__}")
    if set(table) != set(range(1, len(table) + 1)):
        raise Torch7Error("the table is not a list (its keys are not 1..n)")
    return [table[k] for k in range(1, len(table) + 1)]


# -- writing ----------------------------------------------------------------------

def dumps(value):
    """``value`` as torch.save writes it: None, booleans, numbers, strings
    (``str`` as UTF-8, ``bytes`` as they are), dicts and lists (Lua tables;
    a list's keys are 1..n) and numpy arrays (a tensor of the matching CPU
    class with its own contiguous storage).  An object met twice is written
    once and referred to by its index, as torch does."""
    out = bytearray()
    indices = {}  # id of a table or array written -> its reference index
    numbers = itertools.count(1)  # reference indices, storages included

    def header(code, obj):
        """Type code and reference index; True when ``obj`` was written before."""
        known = id(obj) in indices
        if not known:
            indices[id(obj)] = next(numbers)
        out.extend(struct.pack("<ii", code, indices[id(obj)]))
        return known

    def string(data):
        out.extend(struct.pack("<i", len(data)) + data)

    def write(obj):
        if obj is None:
            out.extend(struct.pack("<i", TYPE_NIL))
        elif isinstance(obj, (bool, np.bool_)):
            out.extend(struct.pack("<ii", TYPE_BOOLEAN, int(obj)))
        elif isinstance(obj, (int, float, np.integer, np.floating)):
            out.extend(struct.pack("<id", TYPE_NUMBER, float(obj)))
        elif isinstance(obj, (str, bytes)):
            out.extend(struct.pack("<i", TYPE_STRING))
            string(obj.encode("utf-8") if isinstance(obj, str) else obj)
        elif isinstance(obj, np.ndarray):
            if not header(TYPE_TORCH, obj):
                write_tensor(obj)
        elif isinstance(obj, (dict, list, tuple)):
            if not header(TYPE_TABLE, obj):
                items = list(obj.items()) if isinstance(obj, dict) else list(enumerate(obj, 1))
                out.extend(struct.pack("<i", len(items)))
                for key, item in items:
                    write(key)
                    write(item)
        else:
            raise TypeError(f"cannot write a {type(obj).__name__} as a torch7 object")

    def write_tensor(array):
        element = CLASS_OF_DTYPE.get(array.dtype.newbyteorder("<"))
        if element is None:
            raise TypeError(f"no torch tensor class holds {array.dtype}")
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        strides = [s // array.itemsize for s in array.strides]
        for text in ("V 1", f"torch.{element}Tensor"):
            string(text.encode())
        out.extend(struct.pack(f"<i{2 * array.ndim + 1}q", array.ndim, *array.shape, *strides, 1))
        out.extend(struct.pack("<ii", TYPE_TORCH, next(numbers)))  # its storage, a new object
        for text in ("V 1", f"torch.{element}Storage"):
            string(text.encode())
        out.extend(struct.pack("<q", array.size) + array.tobytes())

    write(value)
    return bytes(out)


def save(path, value):
    """Write ``dumps(value)`` to ``path`` atomically."""
    data = dumps(value)
    with atomic_open(path, "wb") as f:
        f.write(data)
