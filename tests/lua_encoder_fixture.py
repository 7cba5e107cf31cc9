"""The authors' char-CNN-RNN text encoders as their Lua code lays them out in
a ``.t7`` file, and what their Lua computes, without Lua.

Two independent parts, neither using the code under test
(``misc/nets/char_cnn_rnn.py``, ``misc/reference/torch7_encoder.py``):

* ``encoder_file`` builds the encoder as the Lua builds it and torch.save
  writes it, through a Python emulation of the libraries involved, written
  from their sources: torch/graph (``graph.Node``: children, ``visit``, ``bfs``;
  ``graph.Graph``: ``add``, ``reverse``, ``roots``, ``topsort``), torch/nngraph
  (``nngraph.Node``: ``data.mapindex`` / ``reverseMap``, ``split``; a module
  called on nodes; ``gModule.__init``: the out- and in-node, ``bg``, ``fg``,
  ``forwardnodes`` / ``backwardnodes`` by topological sort and ``modules`` in
  forward order), reedscot's ``FixedGRU.lua``, ``FixedRNN.lua``,
  ``HybridCNNLong.lua``, ``HybridCNN.lua`` and ``ImageEncoder.lua`` (noop),
  the trainer's checkpoint table (train_sje_hybrid.lua) and
  ``model_utils.combine_all_parameters``: every parameter a view into one
  flattened storage (gradients into another), the steps' shared Linears
  viewing the same region; each shared module holds a function record
  (``accUpdateGradParameters``), as the authors' files do; tensors are
  ``torch.CudaTensor`` (``CudaLongTensor`` for max-pooling indices) as on
  the authors' GPUs.  The gModule's fields are written with the nodes
  first, so the storages are first written deep inside the graph's node data.
  The files are written with tests/test_torch7.py's writer.
* ``reference_embeddings`` is a float64 NumPy forward pass written straight
  from the Lua semantics (get_embedding.lua's byte loop, torch/nn's
  TemporalConvolution / TemporalMaxPooling C loops, Threshold, the GRU / RNN
  graphs node by node, MulConstant, Dropout, Linear), on the parameters as
  torch holds them.  Its keyword arguments are the mutations the tests check
  the encoder against (each a plausible mistake).
"""

import contextlib
import sys

import numpy as np

from test_torch7 import LuaFunction, LuaTable, T7Object, T7Storage, T7Tensor, write_t7

ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-,;.!?:'\"/\\|_@#$%^&*~`+-=<>()[]{} "
DOC_LENGTH = 201
GRU_ROLES = ("i2h", "i2h_update", "i2h_reset", "h2h", "h2h_update", "h2h_reset")
RNN_ROLES = ("i2h", "h2h")
# positions of each role's first module in the FixedGRU gModule's modules,
# as a public PyTorch port of these files reads them (issue 21)
PUBLIC_PORT_POSITIONS = {"i2h": 1, "i2h_update": 4, "h2h_update": 5, "i2h_reset": 9, "h2h_reset": 10,
                         "h2h": 14}


# -- torch/graph and torch/nngraph -----------------------------------------------

class GraphNode(T7Object):
    """graph.Node / nngraph.Node: ``data`` (shared by the node's copies in
    other graphs), ``children`` (a Lua list that also maps child -> index)."""

    def __init__(self, data):
        for key in ("annotations", "mapindex", "reverseMap"):  # nngraph.Node.__init
            if key not in data:
                data[key] = LuaTable()
        super().__init__("nngraph.Node", LuaTable([("data", data), ("id", 0), ("children", LuaTable()),
                                                   ("visited", False), ("marked", False)]))
        self.data, self.visited, self.marked = data, False, False

    @property
    def children(self):
        return self.fields["children"].array()

    def add(self, child):  # graph.Node:add
        table = self.fields["children"]
        if child not in table:
            table[len(table.array()) + 1] = child
            table[child] = len(table.array())

    def add_input(self, child):  # nngraph.Node:add(child, true)
        self.add(child)
        mapindex = self.data["mapindex"]
        mapindex[len(mapindex.array()) + 1] = child.data
        mapindex[child.data] = len(mapindex.array())
        child.data["reverseMap"][self] = True

    def visit(self, pre, post):
        if not self.visited:
            pre(self)
            for child in self.children:
                child.visit(pre, post)
            post(self)

    def dfs(self, func):
        visited = []

        def pre(node):
            node.visited = True

        def post(node):
            func(node)
            visited.append(node)

        self.visit(pre, post)
        for node in visited:
            node.visited = False

    def bfs(self, func):
        queue, seen = [self], [self]
        self.marked = True
        while queue:
            node = queue.pop(0)
            func(node)
            for child in node.children:
                if not child.marked:
                    child.marked = True
                    queue.append(child)
                    seen.append(child)
        for node in seen:
            node.marked = False

    def graph(self):  # graph.Node:graph: the edges of a breadth-first walk
        g = Graph()

        def add_edges(node):
            for child in node.children:
                g.add(Edge(node, child))

        self.bfs(add_edges)
        return g


class Edge(T7Object):
    def __init__(self, source, target):
        super().__init__("graph.Edge", LuaTable([("from", source), ("to", target)]))
        self.source, self.target = source, target


class Graph(T7Object):
    def __init__(self):
        super().__init__("graph.Graph", LuaTable([("nodes", LuaTable()), ("edges", LuaTable())]))
        self.node_list, self.edge_list = [], []

    def index(self, node):
        return self.fields["nodes"][node]

    def add(self, edge):
        nodes, edges = self.fields["nodes"], self.fields["edges"]
        if edge not in edges:
            self.edge_list.append(edge)
            edges[len(self.edge_list)] = edge
            edges[edge] = len(self.edge_list)
        for node in (edge.source, edge.target):
            if node not in nodes:
                self.node_list.append(node)
                nodes[len(self.node_list)] = node
                nodes[node] = len(self.node_list)
        edge.source.add(edge.target)
        edge.source.fields["id"] = nodes[edge.source]
        edge.target.fields["id"] = nodes[edge.target]

    def reverse(self):
        """The graph with every edge turned round, on new nodes sharing the
        data; and {id(new node): its original}."""
        reversed_graph, copies = Graph(), {}
        for edge in self.edge_list:
            for node in (edge.source, edge.target):
                if id(node) not in copies:
                    copies[id(node)] = (node, GraphNode(node.data))
            reversed_graph.add(Edge(copies[id(edge.target)][1], copies[id(edge.source)][1]))
        return reversed_graph, {id(copy): original for original, copy in copies.values()}

    def roots(self):
        sources = {id(e.source): e.source for e in self.edge_list}
        for edge in self.edge_list:
            sources.pop(id(edge.target), None)
        return sorted(sources.values(), key=self.index)

    def topsort(self):
        reversed_graph, original = self.reverse()
        roots = reversed_graph.roots()
        root = roots[0]
        if len(roots) > 1:
            root = GraphNode(LuaTable())
            for node in roots:
                root.add(node)
        order = []
        root.dfs(lambda node: order.append(original[id(node)]) if id(node) in original else None)
        return order


def node(data):
    return GraphNode(LuaTable(data))


def call(module, *inputs):
    """A module called on nodes (nngraph's Module:__call__)."""
    created = node([("module", module)])
    for source in inputs:
        created.add_input(source)
    return created


def split(source, count):
    """nngraph.Node:split: a node feeding ``count`` select nodes."""
    hub = node([("nSplitOutputs", count)])
    hub.add_input(source)
    selects = []
    for index in range(1, count + 1):
        select = node([("selectindex", index), ("input", LuaTable())])
        select.add_input(hub)
        selects.append(select)
    return selects


def gmodule(inputs, outputs, field_order="nodes first"):
    """nn.gModule(inputs, outputs), as its __init__ builds it."""
    outnode = node([("input", LuaTable())])
    for output in outputs:
        outnode.add_input(output)
    innode = node([("input", LuaTable())])
    if len(inputs) == 1:
        inputs[0].add_input(innode)
    else:
        for source, select in zip(inputs, split(innode, len(inputs))):
            source.add_input(select)
    bg = outnode.graph()
    fg, _ = bg.reverse()
    forward = fg.topsort()
    modules = []
    for graph_node in forward:
        graph_node.data["forwardNodeId"] = graph_node.fields["id"]
        if "module" in graph_node.data:
            modules.append(graph_node.data["module"])
    fields = {"forwardnodes": forward, "backwardnodes": bg.topsort(), "fg": fg, "bg": bg,
              "innode": fg.roots()[0], "outnode": outnode, "nInputs": len(inputs), "verbose": False,
              "train": False, "modules": modules, "_type": "torch.CudaTensor"}
    order = list(fields) if field_order == "nodes first" else sorted(fields, reverse=True)
    return T7Object("nn.gModule", LuaTable([(key, fields[key]) for key in order]))


# -- nn modules with flattened parameters ------------------------------------------

DTYPES = {"Cuda": np.float32, "Float": np.float32, "Double": np.float64, "CudaDouble": np.float64,
          "CudaLong": np.int64}


class Parameters:
    """combine_all_parameters: every parameter tensor a view into one flat
    CUDA storage (``flat``), every gradient into another; a tensor given the
    same ``key`` again (a shared module) views the same region."""

    def __init__(self, element):
        self.element, self.dtype = element, DTYPES[element]
        self.values, self.regions = [], {}
        self.flat = T7Storage(np.zeros(0, self.dtype), element)
        self.grad_flat = T7Storage(np.zeros(0, self.dtype), element)

    def view(self, key, array):
        array = np.asarray(array, self.dtype)
        if key not in self.regions:
            self.regions[key] = (sum(v.size for v in self.values), array.shape)
            self.values.append(array.ravel())
        offset, shape = self.regions[key]
        strides = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]
        return (T7Tensor(self.flat, list(shape), strides, offset + 1, self.element),
                T7Tensor(self.grad_flat, list(shape), strides, offset + 1, self.element))

    def finish(self, rng):
        self.flat.values = np.concatenate(self.values)
        self.grad_flat.values = rng.standard_normal(self.flat.values.size).astype(self.dtype)


class ModuleMaker:
    def __init__(self, element, rng, classes=None):
        self.element, self.rng = element, rng
        self.params = Parameters(element)
        self.classes = classes or {}
        self.accumulate = LuaFunction()  # Module.sharedAccUpdateGradParameters, one function shared
        self.role_of = {}  # id(Linear module) -> its parameters' key

    def buffer(self, *shape, element=None):
        """An output / gradInput buffer left from training."""
        values = self.rng.standard_normal(int(np.prod(shape))).astype(DTYPES[element or self.element])
        storage = T7Storage(values, element or self.element)
        strides = [int(np.prod(shape[i + 1:])) for i in range(len(shape))]
        return T7Tensor(storage, list(shape), strides, 1, element or self.element)

    def module(self, typename, fields):
        typename = self.classes.get(typename, typename)
        return T7Object(typename, LuaTable([("output", self.buffer(2, 3)), ("gradInput", self.buffer(2, 3)),
                                            ("train", False), ("_type", "torch.CudaTensor")] + list(fields)))

    def linear(self, key, weight, bias, shared=False):
        w, gw = self.params.view((key, "weight"), weight)
        b, gb = self.params.view((key, "bias"), bias)
        fields = [("weight", w), ("bias", b), ("gradWeight", gw), ("gradBias", gb)]
        if shared:
            fields.append(("accUpdateGradParameters", self.accumulate))
        module = self.module("nn.Linear", fields)
        self.role_of[id(module)] = key
        return module

    def sequential(self, *modules):
        return self.module("nn.Sequential", [("modules", list(modules))])

    def simple(self, typename, **fields):
        return self.module(typename, list(fields.items()))


# -- the Lua networks ------------------------------------------------------------------

def fixed_gru(make, gates, steps, average, untied=None):
    """FixedGRU.rnn(nstep, avg, emb_dim) with ``gates[role] = (weight, bias)``;
    ``untied`` (role, step) gives that step's Linear other weights (not a
    file the Lua makes: a test of the loader's check)."""
    inputs = [call(make.simple("nn.Identity")) for _ in range(steps)]
    hids = []

    def gate(role, step, shared=True):
        weight, bias = gates[role]
        if (role, step) == untied:
            return make.sequential(make.linear(f"{role} untied", weight + 0.5, bias, shared))
        return make.sequential(make.linear(role, weight, bias, shared))

    for i in range(steps):
        i2h_update, i2h_reset, i2h = gate("i2h_update", i, i > 0), gate("i2h_reset", i, i > 0), gate("i2h", i)
        if i == 0:
            hids.append(call(make.simple("nn.Tanh"), call(i2h, inputs[0])))
            continue
        h2h_update, h2h_reset, h2h = gate("h2h_update", i), gate("h2h_reset", i), gate("h2h", i)
        add, sigmoid = make.simple("nn.CAddTable"), make.simple("nn.Sigmoid")
        update = call(sigmoid, call(add, call(i2h_update, inputs[i]), call(h2h_update, hids[i - 1])))
        add, sigmoid = make.simple("nn.CAddTable"), make.simple("nn.Sigmoid")
        reset = call(sigmoid, call(add, call(i2h_reset, inputs[i]), call(h2h_reset, hids[i - 1])))
        gated_hidden = call(make.simple("nn.CMulTable"), reset, hids[i - 1])
        p1 = call(i2h, inputs[i])
        p2 = call(h2h, gated_hidden)
        candidate = call(make.simple("nn.Tanh"), call(make.simple("nn.CAddTable"), p1, p2))
        zh = call(make.simple("nn.CMulTable"), update, candidate)
        minus = call(make.simple("nn.MulConstant", constant_scalar=-1.0, inplace=False), update)
        one_minus = call(make.simple("nn.AddConstant", constant_scalar=1.0, inplace=False), minus)
        zhm1 = call(make.simple("nn.CMulTable"), one_minus, hids[i - 1])
        hids.append(call(make.simple("nn.CAddTable"), zh, zhm1))
    return gmodule(inputs, [mean_of(make, hids) if average else hids[-1]])


def fixed_rnn(make, gates, steps):
    """FixedRNN.rnn(nstep, avg, emb_dim) (it always averages)."""
    inputs = [call(make.simple("nn.Identity")) for _ in range(steps)]
    states = []
    for i in range(steps):
        i2h = make.sequential(make.linear("i2h", *gates["i2h"], True))
        if i == 0:
            states.append(call(make.simple("nn.ReLU", threshold=0.0, val=0.0), call(i2h, inputs[0])))
            continue
        h2h = make.sequential(make.linear("h2h", *gates["h2h"], True))
        total = call(make.simple("nn.CAddTable"), call(i2h, inputs[i]), call(h2h, states[i - 1]))
        states.append(call(make.simple("nn.ReLU", threshold=0.0, val=0.0), total))
    return gmodule(inputs, [mean_of(make, states)])


def mean_of(make, states):
    total = states[0]
    for state in states[1:]:
        total = call(make.simple("nn.CAddTable"), total, state)
    return call(make.simple("nn.MulConstant", constant_scalar=1.0 / len(states), inplace=False), total)


def hybrid_cnn(make, params, field_order):
    """HybridCNNLong / HybridCNN (the pools decide) with the RNN of ``params``."""
    layers = []
    for i, (weight, bias, width, pool) in enumerate(params["convs"]):
        out_size, in_size = weight.shape[0], weight.shape[1] // width
        w, gw = make.params.view((f"conv{i}", "weight"), weight)
        b, gb = make.params.view((f"conv{i}", "bias"), bias)
        layers.append(make.simple("nn.TemporalConvolution", inputFrameSize=in_size, outputFrameSize=out_size,
                                  kW=width, dW=1, weight=w, bias=b, gradWeight=gw, gradBias=gb))
        layers.append(make.simple("nn.Threshold", threshold=1e-6, val=0.0, inplace=False))
        if pool:
            layers.append(make.simple("nn.TemporalMaxPooling", kW=pool[0], dW=pool[1],
                                      indices=make.buffer(2, 3, element="CudaLong")))
    inputs = [call(make.simple("nn.Identity"))]
    frames = call(make.simple("nn.SplitTable", dimension=2.0), call(make.sequential(*layers), inputs[0]))
    rnn = (fixed_gru(make, params["gates"], params["steps"], params["average"], params.get("untied"))
           if params["rnn"] == "gru" else fixed_rnn(make, params["gates"], params["steps"]))
    rnn_node = call(rnn, frames)
    dropout_fields = {"p": params["dropout"], "noise": make.buffer(2, 3), "inplace": False}
    if params["dropout_v2"]:  # nn.Dropout before its "v2" had no such field
        dropout_fields["v2"] = True
    dropout = call(make.simple("nn.Dropout", **dropout_fields), rnn_node)
    weight, bias = params["projection"]
    out = call(make.linear("projection", weight, bias), dropout)
    return gmodule(inputs, [out], field_order)


@contextlib.contextmanager
def deep_recursion():
    """The writer follows the graph's links as torch.save does, deeper than
    Python's default recursion limit."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 50_000))
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def encoder_file(path, params, layout="checkpoint", element="Cuda", classes=None, field_order="nodes first",
                 seed=0):
    """Write the encoder of ``params`` (``random_parameters``) as the authors'
    files are: ``layout`` "checkpoint" (the trainer's table with
    protos.enc_doc) or "module" (the bare gModule); ``element`` the tensor
    class prefix ("Cuda", "Float", "Double"); ``classes`` renames module
    classes (e.g. {"nn.Tanh": "cudnn.Tanh"})."""
    rng = np.random.default_rng(seed)
    make = ModuleMaker(element, rng, classes)
    with deep_recursion():
        encoder = hybrid_cnn(make, params, field_order)
        make.params.finish(rng)
        if layout == "module":
            return write_t7(path, encoder)
        image_input = call(make.simple("nn.Identity"))
        protos = LuaTable([("enc_doc", encoder), ("enc_image", gmodule([image_input], [image_input]))])
        opt = {"cnn_dim": float(params["convs"][-1][0].shape[0]), "doc_length": 201.0, "avg": 1.0,
               "dropout": 0.0}
        checkpoint = LuaTable([("protos", protos), ("opt", opt),
                               ("train_losses", {i: float(2.0 / i) for i in range(1, 40)}),
                               ("val_loss", 0.0), ("val_losses", {}), ("i", 30000.0), ("epoch", 61.2),
                               ("vocab", {ch: float(i) for i, ch in enumerate(ALPHABET, 1)})])
        return write_t7(path, checkpoint)


def rnn_module_positions(params):
    """{role: position of its first module in the RNN gModule's modules}, from
    the emulation (for the cross-check with PUBLIC_PORT_POSITIONS)."""
    make = ModuleMaker("Cuda", np.random.default_rng(0))
    with deep_recursion():
        rnn = fixed_gru(make, params["gates"], params["steps"], params["average"])
    positions = {}
    for index, module in enumerate(rnn.fields["modules"]):
        if module.typename == "nn.Sequential":
            positions.setdefault(make.role_of[id(module.fields["modules"][0])], index)
    return positions


# -- parameters -------------------------------------------------------------------------

def random_parameters(seed, kind="birds", channels=(16, 16, 12), embedding_dim=10, dropout=0.0,
                      dropout_v2=True, average=True):
    """Random weights of the birds (HybridCNNLong + FixedGRU) or flowers
    (HybridCNN + FixedRNN) encoder, in torch's layouts, scaled so that every
    layer's outputs are of order 1."""
    rng = np.random.default_rng(seed)
    pools = [(3, 3), (3, 3), (3, 2) if kind == "flowers" else None]
    convs, length, inputs = [], DOC_LENGTH, len(ALPHABET)
    for out_size, pool in zip(channels, pools):
        fan_in = 4 if inputs == len(ALPHABET) else 4 * inputs  # one-hot input: four ones per window
        weight = rng.uniform(-1, 1, (out_size, 4 * inputs)) * np.sqrt(3.0 / fan_in)
        convs.append((weight, rng.uniform(-0.1, 0.3, out_size), 4, pool))
        length = length - 3
        if pool:
            length = (length - pool[0]) // pool[1] + 1
        inputs = out_size
    size = channels[-1]
    roles = GRU_ROLES if kind == "birds" else RNN_ROLES
    gates = {role: (rng.uniform(-1, 1, (size, size)) * np.sqrt(3.0 / size), rng.uniform(-0.5, 0.5, size))
             for role in roles}
    projection = (rng.uniform(-1, 1, (embedding_dim, size)) * np.sqrt(3.0 / size),
                  rng.uniform(-0.5, 0.5, embedding_dim))
    return {"convs": convs, "gates": gates, "projection": projection, "steps": length,
            "rnn": "gru" if kind == "birds" else "rnn", "average": average, "dropout": dropout,
            "dropout_v2": dropout_v2}


# -- what the Lua computes ----------------------------------------------------------------

def lua_input(captions, lowercase=False, dash_first=False, characters=False):
    """get_embedding.lua's ``txt``: for t = 1..201, the byte ``query_str:sub(t, t)``
    sets channel ``dict[ch]`` (the dict filled in alphabet order, so a repeated
    symbol keeps its last index).  Mutations: lower-cased captions, the first
    index kept for '-', characters instead of bytes."""
    lookup = {}
    for index, symbol in enumerate(ALPHABET):
        if not (dash_first and symbol in lookup):
            lookup[symbol] = index
    out = np.zeros((len(captions), DOC_LENGTH, len(ALPHABET)))
    for row, caption in enumerate(captions):
        if lowercase:
            caption = caption.lower()
        symbols = list(caption) if characters else [chr(b) for b in caption.encode("utf-8")]
        for t, symbol in enumerate(symbols[:DOC_LENGTH]):
            if symbol in lookup:
                out[row, t, lookup[symbol]] = 1.0
    return out


def temporal_convolution(x, weight, bias, width, stride=1, channel_major=False):
    """nn.TemporalConvolution: output frame t = weight @ (the input frames
    t*dW .. t*dW+kW-1, flattened frame after frame) + bias."""
    frames = (x.shape[1] - width) // stride + 1
    windows = np.stack([x[:, t * stride:t * stride + width] for t in range(frames)], axis=1)
    if channel_major:  # mutation: the window flattened channel after channel
        windows = windows.transpose(0, 1, 3, 2)
    return windows.reshape(x.shape[0], frames, -1) @ weight.T + bias


def temporal_max_pooling(x, width, stride):
    frames = (x.shape[1] - width) // stride + 1
    return np.stack([x[:, t * stride:t * stride + width].max(axis=1) for t in range(frames)], axis=1)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def reference_embeddings(params, captions, lowercase=False, dash_first=False, characters=False,
                         last_state=False, standard_gru_start=False, swap_gates=False, channel_major=False):
    """float64 (len(captions), embedding_dim): what get_embedding.lua computes
    with the encoder of ``params`` (dropout at evaluation), or with one of the
    mutations."""
    x = lua_input(captions, lowercase, dash_first, characters)
    for weight, bias, width, pool in params["convs"]:
        x = temporal_convolution(x, weight, bias, width, channel_major=channel_major)
        x = np.where(x > np.float32(1e-6), x, 0.0)  # nn.Threshold(1e-6, 0), compared in float
        if pool:
            x = temporal_max_pooling(x, *pool)
    gates = dict(params["gates"])
    if swap_gates:
        for a, b in (("i2h_update", "i2h_reset"), ("h2h_update", "h2h_reset")):
            gates[a], gates[b] = gates[b], gates[a]

    def lin(role, value):
        weight, bias = gates[role]
        return value @ weight.T + bias

    states = []
    for t in range(x.shape[1]):
        frame = x[:, t]
        if params["rnn"] == "rnn":
            total = lin("i2h", frame) + (lin("h2h", states[-1]) if states else 0.0)
            states.append(np.maximum(total, 0.0))
            continue
        if not states and not standard_gru_start:
            states.append(np.tanh(lin("i2h", frame)))
            continue
        previous = states[-1] if states else np.zeros_like(frame[:, :gates["h2h"][0].shape[0]])
        update = sigmoid(lin("i2h_update", frame) + lin("h2h_update", previous))
        reset = sigmoid(lin("i2h_reset", frame) + lin("h2h_reset", previous))
        candidate = np.tanh(lin("i2h", frame) + lin("h2h", reset * previous))
        states.append(update * candidate + (1.0 - update) * previous)
    hidden = states[-1] if (last_state or not params["average"]) else sum(states) * (1.0 / len(states))
    if not params["dropout_v2"]:  # old nn.Dropout scaled at evaluation
        hidden = hidden * (1.0 - params["dropout"])
    weight, bias = params["projection"]
    return hidden @ weight.T + bias
