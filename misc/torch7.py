"""A small reader for torch7 binary serialisation files (``torch.save``).

The reference demo takes its caption embeddings from a ``.t7`` file written
by ``demo/get_embedding.lua``: a Lua table ``{raw_txt = {<strings>},
fea_txt = {<1 x D tensors>}}``.  This module reads what such files (and
similar simple ones) hold, without Lua or the ``torchfile`` package:

  * nil, numbers (Lua doubles), strings, booleans;
  * tables (returned as ``dict``; shared references are preserved);
  * tensors and storages of the CPU types ``torch.{Double,Float,Byte,Char,
    Short,Int,Long}Tensor`` and the CUDA types ``torch.CudaTensor`` (float) /
    ``torch.CudaDoubleTensor``, which ``get_embedding.lua`` actually writes
    because its text encoder runs on the GPU (returned as numpy arrays);
  * any other torch class written as a plain table of fields (``nn``
    modules and the like), returned as ``TorchObject``.

Lua functions cannot be read.  Layout of the binary format (little-endian,
``long`` = 8 bytes as written on 64-bit Linux): each object starts with an
int32 type code; strings are an int32 length and the bytes; tables and torch
objects carry an int32 reference index (a repeated index refers to an object
read before), tables then an int32 entry count and the key/value objects;
torch objects a version string ``"V <n>"`` and the class name, then the
class's own data: a tensor is int32 ``ndim``, ``ndim`` longs of sizes, of
strides, a 1-based long storage offset and its storage object; a storage is
a long element count and the raw elements.
"""

import struct

import numpy as np

TYPE_NIL = 0
TYPE_NUMBER = 1
TYPE_STRING = 2
TYPE_TABLE = 3
TYPE_TORCH = 4
TYPE_BOOLEAN = 5
TYPE_FUNCTION = 6
TYPE_RECUR_FUNCTION = 8
LEGACY_TYPE_RECUR_FUNCTION = 7
# Deepest nesting of tables / torch objects read (each level is two Python
# frames): far beyond any file torch.save writes for models or embeddings,
# far below Python's recursion limit, so a maliciously deep file is an error
# naming the file instead of a RecursionError.
MAX_NESTING = 200

# torch class-name prefix -> numpy element type
ELEMENT_TYPES = {
    "Double": "<f8",
    "Float": "<f4",
    "Byte": "u1",
    "Char": "i1",
    "Short": "<i2",
    "Int": "<i4",
    "Long": "<i8",
    "Cuda": "<f4",
    "CudaDouble": "<f8",
}


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


def _split_class(typename):
    """'torch.FloatTensor' -> ('Float', 'Tensor'); None for other classes."""
    if not typename.startswith("torch."):
        return None
    name = typename[len("torch."):]
    for kind in ("Tensor", "Storage"):
        if name.endswith(kind) and name[:-len(kind)] in ELEMENT_TYPES:
            return name[:-len(kind)], kind
    return None


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
        self.depth = 0

    def fail(self, message):
        raise Torch7Error(f"{self.source}: {message} (at byte {self.pos}); "
                          "not a torch7 binary file this reader supports")

    def take(self, size):
        if size < 0 or self.pos + size > len(self.data):
            self.fail(f"truncated: needs {size} more bytes")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def int(self):
        return struct.unpack("<i", self.take(4))[0]

    def long(self):
        return struct.unpack(self.long_format, self.take(self.long_size))[0]

    def longs(self, count):
        if count < 0:
            self.fail(f"negative count {count}")
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
        if self.depth >= MAX_NESTING:
            self.fail(f"objects nested deeper than {MAX_NESTING} levels")
        self.depth += 1
        try:
            return self._read_object()
        finally:
            self.depth -= 1

    def _read_object(self):
        code = self.int()
        if code == TYPE_NIL:
            return None
        if code == TYPE_NUMBER:
            return self.double()
        if code == TYPE_STRING:
            return self.string()
        if code == TYPE_BOOLEAN:
            return self.int() == 1
        if code in (TYPE_TABLE, TYPE_TORCH):
            index = self.int()
            if index in self.objects:
                return self.objects[index]
            if code == TYPE_TABLE:
                return self.table(index)
            return self.torch_object(index)
        if code in (TYPE_FUNCTION, TYPE_RECUR_FUNCTION, LEGACY_TYPE_RECUR_FUNCTION):
            self.fail("the file holds a Lua function, which cannot be read outside Lua")
        self.fail(f"unknown object type code {code}")

    def table(self, index):
        table = {}
        self.objects[index] = table
        size = self.int()
        if size < 0:
            self.fail(f"negative table size {size}")
        for _ in range(size):
            key = self.read()
            if isinstance(key, float) and key.is_integer():
                key = int(key)
            elif isinstance(key, dict):
                key = id(key)  # tables as keys: identity, as in Lua
            table[key] = self.read()
        return table

    def torch_object(self, index):
        version = self.string()
        if version.startswith("V "):
            try:
                version_number = int(float(version[2:]))
            except ValueError:
                self.fail(f"bad version string {version!r}")
            typename = self.string()
        else:  # files written before torch7 versioned its classes
            typename, version_number = version, 0
        parts = _split_class(typename)
        if parts is None:
            obj = TorchObject(typename, {}, version_number)
            self.objects[index] = obj
            fields = self.read()
            if not isinstance(fields, dict):
                self.fail(f"{typename}: expected a table of fields")
            obj.fields = fields
            return obj
        element, kind = parts
        dtype = np.dtype(ELEMENT_TYPES[element])
        if kind == "Storage":
            size = self.long()
            if size < 0:
                self.fail(f"negative storage size {size}")
            array = np.frombuffer(self.take(size * dtype.itemsize), dtype=dtype).copy()
            self.objects[index] = array
            return array
        return self.tensor(index, dtype, typename)

    def tensor(self, index, dtype, typename):
        ndim = self.int()
        if ndim < 0:
            self.fail(f"{typename}: negative number of dimensions {ndim}")
        sizes = self.longs(ndim)
        strides = self.longs(ndim)
        offset = self.long() - 1  # stored 1-based
        storage = self.read()
        if ndim == 0 or storage is None:
            array = np.zeros((0,), dtype)
        else:
            if not isinstance(storage, np.ndarray) or storage.dtype != dtype:
                self.fail(f"{typename}: its storage has another element type")
            if any(s < 0 for s in sizes) or offset < 0:
                self.fail(f"{typename}: bad sizes {sizes} or offset {offset + 1}")
            if min(sizes) == 0:
                array = np.zeros(sizes, dtype)
            else:
                last = offset + sum((n - 1) * s for n, s in zip(sizes, strides))
                if any(s < 0 for s in strides) or last >= storage.size:
                    self.fail(f"{typename}: sizes {sizes} / strides {strides} run past its "
                              f"storage of {storage.size} elements")
                view = np.lib.stride_tricks.as_strided(
                    storage[offset:], shape=sizes, strides=[s * dtype.itemsize for s in strides],
                    writeable=False)
                array = np.array(view)
        self.objects[index] = array
        return array


def loads(data, long_size=8, source="<bytes>"):
    """Decode one torch7 object from ``data`` (bytes)."""
    reader = _Reader(data, long_size, source)
    return reader.read()


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
