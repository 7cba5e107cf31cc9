"""misc/reference/torch7.py against files made by a small torch7 *writer* (below).

The writer follows torch7's ``File:writeObject`` layout (little-endian,
8-byte longs): an int32 type code per object; numbers as doubles; strings as
int32 length + bytes; tables and torch objects with an int32 reference index
(a second reference writes only the index), tables with an int32 entry count
and key/value objects, torch objects with "V <version>" and the class name,
then tensors as int32 ndim, sizes, strides, 1-based storage offset (longs)
and the storage object; storages as a long count and the raw elements.
``tests/test_demo.py`` uses it to write ``get_embedding.lua``-style files.
"""

import os
import re
import struct
import tracemalloc

import numpy as np
import pytest

from misc.reference import torch7

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
    cases = [(good[:-3], "4 elements in the 13 bytes left"), (b"\x09\x00\x00\x00", "unknown object type"),
             (b"", "truncated"), (t7_bytes(LuaFunction())[:-4], "truncated"),
             (t7_bytes(T7Tensor(T7Storage(np.zeros(4, np.float32)), [3], [2])), "run past")]
    for data, message in cases:
        with pytest.raises(torch7.Torch7Error, match=message):
            torch7.loads(data, source="x.t7")
    path = tmp_path / "random.t7"
    path.write_bytes(np.random.default_rng(1).bytes(300))
    with pytest.raises(torch7.Torch7Error, match="random.t7"):
        torch7.load(str(path))


def test_lua_functions_are_records_with_their_upvalues():
    """Old nn.Module:share stored sharedAccUpdateGradParameters in every shared
    module: a recursive function record (index, bytecode, upvalues) met again
    by reference; older files have the unreferenced TYPE_FUNCTION."""
    weight = T7Tensor(T7Storage(np.arange(4, dtype=np.float32)), [4], [1])
    shared = LuaFunction(b"\x1bLJ\x02 bytecode", upvalues=[{"name": "weight", "value": weight}])
    legacy = LuaFunction(b"legacy", upvalues=[weight], code=torch7.LEGACY_TYPE_RECUR_FUNCTION)
    old = LuaFunction(b"old", code=torch7.TYPE_FUNCTION)
    modules = [T7Object("nn.Linear", {"accUpdateGradParameters": shared, "weight": weight}),
               T7Object("nn.Linear", {"accUpdateGradParameters": shared}), {"f": legacy, "g": old}]
    first, second, other = torch7.as_list(torch7.loads(t7_bytes(modules)))
    function = first.accUpdateGradParameters
    assert isinstance(function, torch7.LuaFunction) and function.bytecode == b"\x1bLJ\x02 bytecode"
    assert second.accUpdateGradParameters is function
    upvalue = torch7.as_list(function.upvalues)[0]
    assert upvalue["name"] == "weight" and upvalue["value"] is first.weight
    assert other["f"].bytecode == b"legacy" and torch7.as_list(other["f"].upvalues)[0] is first.weight
    assert other["g"].bytecode == b"old" and other["g"].upvalues == {}


def test_tables_and_tensors_as_keys_compare_by_identity():
    """nngraph's mapindex maps input data tables to their index, reverseMap
    nodes to true; a tensor may be a key too."""
    data, other = LuaTable([("x", 1)]), LuaTable([("x", 1)])
    tensor = T7Tensor(T7Storage(np.ones(2, np.float32)), [2], [1])
    table = LuaTable([(1, data), (data, 1), (other, 2), (tensor, "t"), (2, tensor)])
    out = torch7.loads(t7_bytes(table))
    first = out[1]
    assert out[torch7.TableKey(first)] == 1
    keys = [k for k in out if isinstance(k, torch7.TableKey)]
    assert len(keys) == 3 and {out[k] for k in keys} == {1, 2, "t"}
    assert out[torch7.TableKey(out[2])] == "t"


def test_tensors_are_read_only_views_of_their_storage():
    storage = T7Storage(np.arange(12, dtype=np.float32), "Cuda")
    a, b = T7Tensor(storage, [3, 4], [4, 1]), T7Tensor(storage, [4], [1], offset=5)
    out = torch7.loads(t7_bytes([a, b, storage]))
    first, second, whole = torch7.as_list(out)
    assert np.shares_memory(first, whole) and np.shares_memory(second, whole)
    assert not first.flags.writeable
    np.testing.assert_array_equal(second, [4, 5, 6, 7])
    # a size-1 dimension's stride is never used, however large
    out = torch7.loads(t7_bytes(T7Tensor(storage, [1, 3], [2 ** 62, 2], offset=2)))
    np.testing.assert_array_equal(out, [[1, 3, 5]])


def crafted(header_edit=None, **tensor):
    """A Float tensor over a storage of ``storage`` elements, with the sizes,
    strides and offset given (any values, as a hostile file has them)."""
    storage = T7Storage(np.ones(tensor.pop("storage", 1), np.float32))
    data = t7_bytes(T7Tensor(storage, tensor["sizes"], tensor["strides"], tensor.get("offset", 1)))
    return header_edit(data) if header_edit else data


def raw_record(*fields):
    return b"".join(struct.pack("<" + kind, value) for kind, value in fields)


VIEW = T7Tensor(T7Storage(np.ones(4, np.float32)), [2, 2], [1, 2])
HOSTILE_FILES = {
    # zero strides: a 1-element storage viewed as 10^10 elements (a 250-byte
    # file made the demo allocate 2.2 GB before this was bounded)
    "zero strides": (crafted(sizes=[100000, 100000], strides=[0, 0]), "beyond what a file of"),
    "repeated 1-d": (crafted(sizes=[2 ** 40], strides=[0]), "beyond what a file of"),
    "overlapping": (crafted(sizes=[2 ** 31, 2 ** 31], strides=[1, 1], storage=2 ** 16), "beyond what"),
    "sizes overflow int64": (crafted(sizes=[2 ** 62, 2 ** 62, 8], strides=[0, 0, 0]), "beyond what"),
    "negative stride": (crafted(sizes=[3], strides=[-1], storage=4, offset=3), "negative size, stride"),
    "negative size": (crafted(sizes=[-3, 2], strides=[1, 1], storage=4), "negative size, stride"),
    "70 dimensions": (crafted(sizes=[1] * 70, strides=[1] * 70), "70 dimensions; at most 25"),
    "negative dimensions": (raw_record(("i", 4), ("i", 1), ("i", 3), ("3s", b"V 1"), ("i", 16),
                                       ("16s", b"torch.CudaTensor"), ("i", -5)), "-5 dimensions"),
    "storage of 2^50 elements": (raw_record(("i", 4), ("i", 1), ("i", 3), ("3s", b"V 1"), ("i", 18),
                                            ("18s", b"torch.FloatStorage"), ("q", 2 ** 50)), "bytes left"),
    "string of 2 GB": (raw_record(("i", 2), ("i", 2 ** 31 - 1)) + b"abc", "truncated"),
    "table of 2^31 entries": (raw_record(("i", 3), ("i", 1), ("i", 2 ** 31 - 1)), "entries in the"),
    "version V inf": (crafted(sizes=[1], strides=[1], header_edit=lambda d: d.replace(
        b"\x03\x00\x00\x00V 1", b"\x05\x00\x00\x00V inf", 1)), "bad version string 'V inf'"),
    "version V nan": (crafted(sizes=[1], strides=[1], header_edit=lambda d: d.replace(
        b"\x03\x00\x00\x00V 1", b"\x05\x00\x00\x00V nan", 1)), "bad version string 'V nan'"),
    "past the storage": (crafted(sizes=[2, 3], strides=[3, 1], storage=5), "run past its storage"),
    # a tensor whose storage is another tensor (a strided view): not a storage
    "a tensor as storage": (t7_bytes([VIEW, T7Tensor(VIEW, [4, 4], [1, 4])]),
                            "its storage is not a torch.FloatStorage"),
    "offset past the storage": (crafted(sizes=[1], strides=[1], storage=5, offset=7), "run past its storage"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_hostile_headers_are_one_line_errors_without_allocating(case):
    data, message = HOSTILE_FILES[case]
    tracemalloc.start()
    try:
        with pytest.raises(torch7.Torch7Error, match=re.escape(message)) as error:
            torch7.loads(data, source="hostile.t7")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(error.value).startswith("hostile.t7: ") and "\n" not in str(error.value)
    assert peak < 1 << 20, peak  # not even a megabyte


def test_many_views_of_one_storage_exhaust_the_budget():
    """Stacking views on one storage cannot multiply what a caller copying
    them allocates: all tensors of a file together view at most
    view_budget(file size) elements."""
    storage = T7Storage(np.ones(10_000, np.float32))
    views = [T7Tensor(storage, [10_000], [1]) for _ in range(3000)]
    data = t7_bytes(views)
    assert 3000 * 10_000 > torch7.view_budget(len(data))
    with pytest.raises(torch7.Torch7Error, match="beyond what a file of"):
        torch7.loads(data, source="views.t7")
    fewer = t7_bytes(views[:100])
    assert len(torch7.as_list(torch7.loads(fewer))) == 100


def test_writer_matches_an_independent_writer(tmp_path):
    """torch7.dumps writes what get_embedding.lua's torch.save writes, byte for
    byte as this module's writer does (with FloatTensors); raw bytes stay bytes."""
    rng = np.random.default_rng(2)
    rows = [rng.standard_normal((1, 6)).astype(np.float32) for _ in range(3)]
    captions = ["a red bird", b"caf\xc3\xa9 \xff", ""]
    ours = torch7.dumps({"raw_txt": captions, "fea_txt": rows})
    theirs = t7_bytes({"raw_txt": captions,
                       "fea_txt": [T7Tensor(T7Storage(r, "Float"), [1, 6], [6, 1]) for r in rows]})
    assert ours == theirs
    path = str(tmp_path / "out.t7")
    torch7.save(path, {"x": np.arange(6.0).reshape(2, 3), "same": rows[0], "again": rows[0]})
    out = torch7.load(path)
    np.testing.assert_array_equal(out["x"], np.arange(6.0).reshape(2, 3))
    assert out["same"] is out["again"] and out["x"].dtype == np.float64
    assert os.listdir(tmp_path) == ["out.t7"]


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
    """The reader is iterative: the MAX_NESTING levels a graph's links make
    cost no Python recursion; deeper is an error."""
    with pytest.raises(torch7.Torch7Error,
                       match=f"deep.t7: objects nested deeper than {torch7.MAX_NESTING} levels"):
        torch7.loads(nested_tables(200_000), source="deep.t7")
    table = torch7.loads(nested_tables(torch7.MAX_NESTING))
    for _ in range(torch7.MAX_NESTING):
        table = table[1]
    assert table is None
