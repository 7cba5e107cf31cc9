"""misc/torch7.py against files made by a small torch7 *writer* (below).

The writer follows torch7's ``File:writeObject`` layout (little-endian,
8-byte longs): an int32 type code per object; numbers as doubles; strings as
int32 length + bytes; tables and torch objects with an int32 reference index
(a second reference writes only the index), tables with an int32 entry count
and key/value objects, torch objects with "V <version>" and the class name,
then tensors as int32 ndim, sizes, strides, 1-based storage offset (longs)
and the storage object; storages as a long count and the raw elements.
``tests/test_demo.py`` uses it to write ``get_embedding.lua``-style files.
"""

import struct

import numpy as np
import pytest

from misc import torch7

CLASS_OF_DTYPE = {np.dtype("float32"): "Float", np.dtype("float64"): "Double",
                  np.dtype("uint8"): "Byte", np.dtype("int8"): "Char", np.dtype("int16"): "Short",
                  np.dtype("int32"): "Int", np.dtype("int64"): "Long"}


class T7Storage:
    def __init__(self, values, element="Float"):
        self.element = element
        self.values = np.ascontiguousarray(values).ravel()


class T7Tensor:
    """A tensor view: sizes/strides in elements, 1-based offset, a storage."""

    def __init__(self, storage, sizes, strides, offset=1, element=None):
        self.storage, self.sizes, self.strides, self.offset = storage, sizes, strides, offset
        self.element = element or (storage.element if storage is not None else "Float")


class T7Object:
    """An instance of another torch class, written as a table of fields."""

    def __init__(self, typename, fields):
        self.typename, self.fields = typename, fields


class LuaFunction:
    """A Lua function record: ``code`` TYPE_RECUR_FUNCTION (referenced by
    index, as torch.save writes functions today), its legacy form, or the
    old unreferenced TYPE_FUNCTION; bytecode (never run) and upvalues."""

    def __init__(self, bytecode=b"\x1bLJ\x01\x02fake bytecode", upvalues=None,
                 code=torch7.TYPE_RECUR_FUNCTION):
        self.bytecode, self.upvalues, self.code = bytecode, {} if upvalues is None else upvalues, code


class LuaTable:
    """A Lua table whose keys may be any object (tables, graph nodes): Lua
    compares strings and numbers by value, everything else by identity.
    Entries are written in insertion order."""

    def __init__(self, items=()):
        self.items, self._where = [], {}
        for key, value in items:
            self[key] = value

    @staticmethod
    def _identity(key):
        return ("value", type(key), key) if isinstance(key, (str, int, float, bool)) else ("object", id(key))

    def __setitem__(self, key, value):
        where = self._where.setdefault(self._identity(key), len(self.items))
        if where == len(self.items):
            self.items.append((key, value))
        else:
            self.items[where] = (key, value)

    def __getitem__(self, key):
        return self.items[self._where[self._identity(key)]][1]

    def __contains__(self, key):
        return self._identity(key) in self._where

    def array(self):
        """The values at keys 1, 2, ... (Lua's ipairs)."""
        values = []
        while len(values) + 1 in self:
            values.append(self[len(values) + 1])
        return values


class Torch7Writer:
    def __init__(self, long_size=8, versioned=True):
        self.out = bytearray()
        self.long_format = "<q" if long_size == 8 else "<i"
        self.versioned = versioned
        self.index = {}

    def int(self, value):
        self.out += struct.pack("<i", value)

    def long(self, value):
        self.out += struct.pack(self.long_format, value)

    def raw_string(self, text):
        data = text.encode("utf-8")
        self.int(len(data))
        self.out += data

    def reference(self, code, obj):
        """Type code and index; True when the object was written before."""
        self.int(code)
        known = id(obj) in self.index
        if not known:
            self.index[id(obj)] = (len(self.index) + 1, obj)  # keep obj alive: ids stay unique
        self.int(self.index[id(obj)][0])
        return known

    def class_header(self, typename):
        if self.versioned:
            self.raw_string("V 1")
        self.raw_string(typename)

    def write(self, obj):
        if obj is None:
            self.int(torch7.TYPE_NIL)
        elif isinstance(obj, bool):
            self.int(torch7.TYPE_BOOLEAN)
            self.int(1 if obj else 0)
        elif isinstance(obj, (int, float)):
            self.int(torch7.TYPE_NUMBER)
            self.out += struct.pack("<d", float(obj))
        elif isinstance(obj, (str, bytes)):
            self.int(torch7.TYPE_STRING)
            data = obj.encode("utf-8") if isinstance(obj, str) else obj
            self.int(len(data))
            self.out += data
        elif isinstance(obj, LuaFunction):
            if obj.code == torch7.TYPE_FUNCTION:
                self.int(obj.code)
            elif self.reference(obj.code, obj):
                return self
            self.int(len(obj.bytecode))
            self.out += obj.bytecode
            self.write(obj.upvalues)
        elif isinstance(obj, LuaTable):
            if not self.reference(torch7.TYPE_TABLE, obj):
                self.int(len(obj.items))
                for key, value in obj.items:
                    self.write(key)
                    self.write(value)
        elif isinstance(obj, np.ndarray):
            element = CLASS_OF_DTYPE[obj.dtype]
            strides = [s // obj.itemsize for s in np.ascontiguousarray(obj).strides]
            self.write(T7Tensor(T7Storage(obj, element), list(obj.shape), strides))
        elif isinstance(obj, T7Storage):
            if not self.reference(torch7.TYPE_TORCH, obj):
                self.class_header(f"torch.{obj.element}Storage")
                self.long(obj.values.size)
                self.out += obj.values.astype(obj.values.dtype.newbyteorder("<")).tobytes()
        elif isinstance(obj, T7Tensor):
            if not self.reference(torch7.TYPE_TORCH, obj):
                self.class_header(f"torch.{obj.element}Tensor")
                self.int(len(obj.sizes))
                for value in list(obj.sizes) + list(obj.strides) + [obj.offset]:
                    self.long(value)
                self.write(obj.storage)
        elif isinstance(obj, T7Object):
            if not self.reference(torch7.TYPE_TORCH, obj):
                self.class_header(obj.typename)
                self.write(obj.fields)
        elif isinstance(obj, (dict, list)):
            if not self.reference(torch7.TYPE_TABLE, obj):
                items = list(obj.items()) if isinstance(obj, dict) else list(enumerate(obj, 1))
                self.int(len(items))
                for key, value in items:
                    self.write(key)
                    self.write(value)
        else:
            raise TypeError(type(obj))
        return self

    def bytes(self):
        return bytes(self.out)


def t7_bytes(obj, **kwargs):
    return Torch7Writer(**kwargs).write(obj).bytes()


def write_t7(path, obj, **kwargs):
    with open(path, "wb") as f:
        f.write(t7_bytes(obj, **kwargs))
    return path


def embedding_file(path, captions, embeddings, element="Cuda"):
    """What demo/get_embedding.lua saves: {raw_txt = {...}, fea_txt = {1 x D tensors}}
    (its encoder runs on the GPU, so the tensors are torch.CudaTensor)."""
    rows = [T7Tensor(T7Storage(np.asarray(e, np.float32), element), [1, len(e)], [len(e), 1])
            for e in embeddings]
    return write_t7(path, {"raw_txt": list(captions), "fea_txt": rows})


# -- tests ---------------------------------------------------------------------

def test_get_embedding_lua_file(tmp_path):
    rng = np.random.default_rng(0)
    captions = ["this bird is red with a short beak", "a small yellow bird", "ünïcode wing"]
    features = rng.standard_normal((3, 1024)).astype(np.float32)
    path = embedding_file(str(tmp_path / "captions.t7"), captions, features)
    table = torch7.load(path)
    assert set(table) == {"raw_txt", "fea_txt"}
    assert torch7.as_list(table["raw_txt"]) == captions
    rows = torch7.as_list(table["fea_txt"])
    assert [r.shape for r in rows] == [(1, 1024)] * 3 and all(r.dtype == np.float32 for r in rows)
    np.testing.assert_array_equal(np.concatenate(rows), features)


@pytest.mark.parametrize("element,dtype", [
    ("Float", np.float32), ("Double", np.float64), ("Cuda", np.float32), ("CudaDouble", np.float64),
    ("Byte", np.uint8), ("Char", np.int8), ("Short", np.int16), ("Int", np.int32), ("Long", np.int64)])
def test_tensor_types(element, dtype):
    values = (np.arange(24) - 5).astype(dtype).reshape(2, 3, 4)
    tensor = T7Tensor(T7Storage(values, element), [2, 3, 4], [12, 4, 1])
    out = torch7.loads(t7_bytes(tensor))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, values)


def test_strided_views_offsets_and_shared_storage():
    storage = T7Storage(np.arange(20, dtype=np.float64), "Double")
    transposed = T7Tensor(storage, [4, 3], [1, 4], offset=3)  # elements 2.. as a 3x4 block, transposed
    row = T7Tensor(storage, [5], [2], offset=2)                # every 2nd element from index 1
    table = {"a": transposed, "b": row, "same": transposed, "storage": storage}
    out = torch7.loads(t7_bytes(table))
    block = np.arange(20, dtype=np.float64)[2:14].reshape(3, 4)
    np.testing.assert_array_equal(out["a"], block.T)
    np.testing.assert_array_equal(out["b"], np.arange(1, 11, 2))
    assert out["same"] is out["a"]
    np.testing.assert_array_equal(out["storage"], np.arange(20))


def test_plain_lua_values_and_shared_tables():
    shared = {"x": 1.5}
    obj = {"nil": None, "yes": True, "no": False, "pi": 3.25, "n": 7, "s": "text",
           "list": ["a", "b", "c"], 1: "one", 2.5: "float key", "t1": shared, "t2": shared,
           "nested": {"inner": [1, 2, {"deep": "x"}]}, "empty": {}}
    out = torch7.loads(t7_bytes(obj))
    assert out["nil"] is None and out["yes"] is True and out["no"] is False
    assert out["pi"] == 3.25 and out["n"] == 7.0 and out["s"] == "text"
    assert torch7.as_list(out["list"]) == ["a", "b", "c"]
    assert out[1] == "one" and out[2.5] == "float key"
    assert out["t1"] is out["t2"] and out["t1"] == {"x": 1.5}
    assert torch7.as_list(out["nested"]["inner"])[2] == {"deep": "x"}
    assert out["empty"] == {} and torch7.as_list(out["empty"]) == []
    with pytest.raises(torch7.Torch7Error):
        torch7.as_list(out)


def test_other_torch_classes_unversioned_files_and_4_byte_longs():
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    module = T7Object("nn.Linear", {"weight": weight, "train": False})
    for kwargs in ({}, {"versioned": False}, {"long_size": 4}):
        out = torch7.loads(t7_bytes([module, module], **kwargs), long_size=kwargs.get("long_size", 8))
        first, second = torch7.as_list(out)
        assert isinstance(first, torch7.TorchObject) and first.typename == "nn.Linear"
        assert second is first and first.train is False
        np.testing.assert_array_equal(first.weight, weight)


def test_empty_tensor_and_tensor_without_storage():
    out = torch7.loads(t7_bytes({"e": T7Tensor(None, [], []), "z": np.zeros((0, 3), np.float32)}))
    assert out["e"].size == 0
    assert out["z"].shape == (0, 3)


def test_broken_files_are_errors(tmp_path):
    good = t7_bytes({"raw_txt": ["a"], "fea_txt": [np.ones((1, 4), np.float32)]})
    for data, message in ((good[:-3], "truncated"), (b"\x09\x00\x00\x00", "unknown object type"),
                          (b"", "truncated"), (t7_bytes(LuaFunction()), "Lua function"),
                          (t7_bytes(T7Tensor(T7Storage(np.zeros(4, np.float32)), [3], [2])), "run past")):
        with pytest.raises(torch7.Torch7Error, match=message):
            torch7.loads(data, source="x.t7")
    path = tmp_path / "random.t7"
    path.write_bytes(np.random.default_rng(1).bytes(300))
    with pytest.raises(torch7.Torch7Error, match="random.t7"):
        torch7.load(str(path))


def nested_tables(depth):
    """A table holding a table ... ``depth`` deep (written flat: the writer
    above would itself recurse that deep)."""
    out = bytearray()
    for index in range(1, depth + 1):
        out += struct.pack("<iii", torch7.TYPE_TABLE, index, 1)  # one entry
        out += struct.pack("<id", torch7.TYPE_NUMBER, 1.0)  # its key; its value follows
    out += struct.pack("<i", torch7.TYPE_NIL)
    return bytes(out)


def test_deep_nesting_is_an_error_not_a_recursion_error():
    with pytest.raises(torch7.Torch7Error, match="deep.t7: objects nested deeper than 200 levels"):
        torch7.loads(nested_tables(200_000), source="deep.t7")
    table = torch7.loads(nested_tables(torch7.MAX_NESTING - 1))
    for _ in range(torch7.MAX_NESTING - 1):
        table = table[1]
    assert table is None
