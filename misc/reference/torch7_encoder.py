"""The authors' char-CNN-RNN text encoders (``.t7``) read into ``CharCNNRNN``.

The published encoders (``lm_sje_nc4_cub_hybrid_gru18_a1_c512_..._iter30000.t7``
for birds, ``lm_sje_flowers_c10_hybrid_..._iter16400.t7`` for flowers) are
what torch.save wrote: a trainer checkpoint whose ``protos.enc_doc`` is the
encoder (a bare module is accepted too), an ``nn.gModule`` (nngraph) of

    input -> nn.Sequential (the CNN) -> nn.SplitTable(2) -> nn.gModule (the RNN)
          -> nn.Dropout -> nn.Linear -> output

Nothing is assumed from positions: both graphs are read from their forward
nodes (``forwardnodes``; a node's inputs, in order, are the nodes whose
``data`` its ``data.mapindex`` lists) and matched against the formulas of
FixedGRU.lua / FixedRNN.lua (``STEP_PATTERNS``), which gives every Linear its
role from what it feeds: the sigmoid whose output scales the candidate state
is the update gate, the one multiplying the previous state before a Linear
is the reset gate, the Linear inside the tanh the candidate's.  All steps
must share each role's weights (the Lua ties them with ``share``), and the
CNN's frames must be as many as the RNN's steps.  Tensors may be CUDA, float
or double (computed in float32 here), views into flattened parameter
storages shared between modules; ``cudnn.Tanh`` / ``Sigmoid`` / ``ReLU`` are
read as their ``nn`` twins.  Anything else is a one-line ``TextEncoderError``
saying what was found.
"""

import math

import keras
import numpy as np

from misc.nets.char_cnn_rnn import (
    ALPHABET_SIZE,
    MAX_LAYER_SIZE,
    MAX_WEIGHTS,
    SEQUENCE_LENGTH,
    CharCNNRNN,
    TextEncoderError,
    frames_after,
)
from misc.reference import torch7
from misc.reference.torch7 import shown

# cudnn's modules compute what their nn twins compute.
ALIASES = {"cudnn.Tanh": "nn.Tanh", "cudnn.Sigmoid": "nn.Sigmoid", "cudnn.ReLU": "nn.ReLU"}
COMMUTATIVE = ("nn.CAddTable", "nn.CMulTable")
PASS_THROUGH = "nn.Identity"


# -- patterns over the graph ---------------------------------------------------

class Var:
    """Any node, bound to ``name`` (a second occurrence must be the same node)."""

    def __init__(self, name):
        self.name = name


class Op:
    """A node of module ``typename`` whose inputs match ``inputs`` (either
    order for a commutative table op); ``name`` binds it; ``constant`` is
    the ``constant_scalar`` of an AddConstant / MulConstant."""

    def __init__(self, typename, *inputs, name=None, constant=None):
        self.typename, self.inputs, self.name, self.constant = typename, inputs, name, constant


def linear(role, source):
    return Op("nn.Linear", source, name=role)


_X, _H = Var("x"), Var("h")
_UPDATE = Op("nn.Sigmoid", Op("nn.CAddTable", linear("i2h_update", _X), linear("h2h_update", _H)),
             name="update")
_RESET = Op("nn.Sigmoid", Op("nn.CAddTable", linear("i2h_reset", _X), linear("h2h_reset", _H)))
_CANDIDATE = Op("nn.Tanh", Op("nn.CAddTable", linear("i2h", _X),
                              linear("h2h", Op("nn.CMulTable", _RESET, _H))))
# (first step, later steps) of FixedGRU.lua and FixedRNN.lua: x is the step's
# input, h the previous hidden state.
STEP_PATTERNS = {
    "gru": (Op("nn.Tanh", linear("i2h", _X)),
            Op("nn.CAddTable", Op("nn.CMulTable", _UPDATE, _CANDIDATE),
               Op("nn.CMulTable", Op("nn.AddConstant", Op("nn.MulConstant", Var("update"), constant=-1.0),
                                     constant=1.0), _H))),
    "rnn": (Op("nn.ReLU", linear("i2h", _X)),
            Op("nn.ReLU", Op("nn.CAddTable", linear("i2h", _X), linear("h2h", _H)))),
}
ENCODER_PATTERN = Op("nn.Linear", Op("nn.Dropout", Op("nn.gModule", Op(
    "nn.SplitTable", Op("nn.Sequential", Var("input"), name="cnn"), name="split"), name="rnn"),
    name="dropout"), name="projection")


class Node:
    """A forward node of a gModule: its module (a one-module nn.Sequential
    stands for the module it holds; ``wrapper`` keeps it), its inputs."""

    def __init__(self, data):
        self.data = data
        self.wrapper = data.get("module")
        self.module = self.wrapper
        if _typename(self.wrapper) == "nn.Sequential":
            inner = _as_list(self.wrapper.fields.get("modules"), "nn.Sequential modules")
            if len(inner) == 1:
                self.module = inner[0]
        self.typename = _typename(self.module)
        self.inputs = []

    def source(self):
        """The node whose output this one passes on (itself unless it is an
        nn.Identity or a module-less single-input node)."""
        node, seen = self, set()
        while (node.typename == PASS_THROUGH or (node.module is None and "selectindex" not in node.data)) \
                and len(node.inputs) == 1 and id(node) not in seen:
            seen.add(id(node))  # a crafted graph may loop
            node = node.inputs[0]
        return node


def _typename(module):
    name = module.typename if isinstance(module, torch7.TorchObject) else None
    return ALIASES.get(name, name)


def _whole(value):
    """A Lua number that is a whole number as an int, else None."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return int(value) if is_number and math.isfinite(value) and value == int(value) else None


def _as_list(table, what):
    try:
        return torch7.as_list(table)
    except torch7.Torch7Error:
        raise LayoutMismatch(f"{what} is not a list") from None


class LayoutMismatch(Exception):
    """The graph is not the expected one (becomes a TextEncoderError)."""


def match(pattern, node, bound):
    """Yield every binding (a dict name -> Node extending ``bound``) under
    which the value of ``node`` matches ``pattern``."""
    node = node.source()
    if isinstance(pattern, Var):
        if pattern.name not in bound:
            yield {**bound, pattern.name: node}
        elif bound[pattern.name] is node:
            yield bound
        return
    if node.typename != pattern.typename or len(node.inputs) != len(pattern.inputs):
        return
    if pattern.constant is not None and constant(node) != pattern.constant:
        return
    if pattern.name is not None:
        if pattern.name in bound and bound[pattern.name] is not node:
            return
        bound = {**bound, pattern.name: node}
    orders = [node.inputs]
    if pattern.typename in COMMUTATIVE and len(node.inputs) == 2:
        orders.append(node.inputs[::-1])
    for inputs in orders:
        yield from _match_all(pattern.inputs, inputs, bound)


def _match_all(patterns, nodes, bound):
    if not patterns:
        yield bound
        return
    for first in match(patterns[0], nodes[0], bound):
        yield from _match_all(patterns[1:], nodes[1:], first)


def constant(node):
    """The constant_scalar of an AddConstant / MulConstant node (None if it is not a number)."""
    value = node.module.fields.get("constant_scalar")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def first_match(pattern, node, bound):
    return next(match(pattern, node, bound), None)


class Graph:
    """The forward graph of an nn.gModule."""

    def __init__(self, gmodule):
        fields = gmodule.fields
        forward = _as_list(fields.get("forwardnodes"), "its forwardnodes")
        datas = [getattr(node, "fields", {}).get("data") for node in forward]
        if not all(isinstance(data, dict) for data in datas):
            raise LayoutMismatch("a forward node without data")
        self.nodes = [Node(data) for data in datas]
        by_data = {id(node.data): node for node in self.nodes}
        for node in self.nodes:
            mapindex = node.data.get("mapindex", {})
            if not isinstance(mapindex, dict):
                raise LayoutMismatch("a node's mapindex is not a table")
            inputs = [mapindex.get(k) for k in range(1, sum(isinstance(k, int) for k in mapindex) + 1)]
            if not all(id(data) in by_data for data in inputs):
                raise LayoutMismatch("a node's input is not a node of the graph")
            node.inputs = [by_data[id(data)] for data in inputs]
        self.innode = self.node_of(fields.get("innode"), "innode")
        outnode = self.node_of(fields.get("outnode"), "outnode")
        if len(outnode.inputs) != 1:
            raise LayoutMismatch(f"{len(outnode.inputs)} outputs; the encoder has one")
        self.output = outnode.inputs[0]
        self.modules = _as_list(fields.get("modules", {}), "its modules")

    def node_of(self, graph_node, what):
        data = getattr(graph_node, "fields", {}).get("data")
        for node in self.nodes:
            if node.data is data:
                return node
        raise LayoutMismatch(f"its {what} is not one of its forward nodes")

    def position(self, node):
        """0-based index of the node's module in the gModule's ``modules`` (None if absent)."""
        return next((i for i, module in enumerate(self.modules) if module is node.wrapper), None)


# -- fields ---------------------------------------------------------------------

def integer_field(module, name, low=1, high=MAX_LAYER_SIZE):
    value = _whole(module.fields.get(name))
    if value is None or not low <= value <= high:
        raise LayoutMismatch(f"{shown(module.typename)}'s {name} is {shown(module.fields.get(name))}; "
                             f"expected an integer from {low} to {high}")
    return value


def number_field(module, name, default=None):
    value = module.fields.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LayoutMismatch(f"{shown(module.typename)}'s {name} is {shown(value)}; expected a finite number")
    return float(value)


def tensor_field(module, name, shape, required=True):
    """A weight tensor of exactly ``shape``, as read (a view of its storage;
    a missing optional one, such as a Linear without bias, is zeros)."""
    value = module.fields.get(name)
    if value is None and not required:
        return np.zeros(shape, np.float32)
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        raise LayoutMismatch(f"{shown(module.typename)}'s {name} is not a float tensor")
    if value.shape != tuple(shape):
        raise LayoutMismatch(f"{shown(module.typename)}'s {name} has shape {list(value.shape)}; expected "
                             f"{list(shape)}")
    return value


def linear_weights(module, inputs, outputs=None):
    """(weight (outputs x inputs), bias) of an nn.Linear taking ``inputs``
    (and giving ``outputs``, if given)."""
    weight = module.fields.get("weight")
    rows = weight.shape[0] if isinstance(weight, np.ndarray) and weight.ndim == 2 else 0
    outputs = outputs or rows
    if not 1 <= outputs <= MAX_LAYER_SIZE:
        raise LayoutMismatch(f"nn.Linear's weight is not a matrix of 1 to {MAX_LAYER_SIZE} rows")
    return [tensor_field(module, "weight", (outputs, inputs)),
            tensor_field(module, "bias", (outputs,), required=False)]


def checked_weights(parts):
    """{Keras layer name: [weight, bias] as read} -> the same as float32
    copies, after checking their total size and their values."""
    total = sum(array.size for arrays in parts.values() for array in arrays)
    if total > MAX_WEIGHTS:
        raise LayoutMismatch(f"{total} weights; at most {MAX_WEIGHTS} are supported")
    for name, arrays in parts.items():
        if not all(np.all(np.isfinite(array)) for array in arrays):
            raise LayoutMismatch(f"the weights of its {name} layer hold NaN or infinite values")
    return {name: [np.array(array, np.float32) for array in arrays] for name, arrays in parts.items()}


# -- the parts ------------------------------------------------------------------

def read_cnn(sequential):
    """Per convolution (channels, width, stride, pooling or None, weight,
    bias) and the Threshold's (threshold, value) from the CNN's modules."""
    modules = _as_list(sequential.fields.get("modules"), "the CNN's modules")
    layers, thresholds, inputs = [], set(), ALPHABET_SIZE
    position = 0
    while position < len(modules):
        names = [_typename(m) for m in modules[position:position + 3]]
        if names[:2] != ["nn.TemporalConvolution", "nn.Threshold"]:
            raise LayoutMismatch(f"the CNN's module {position + 1} is {shown(names[0])}; expected "
                                 "nn.TemporalConvolution followed by nn.Threshold (and optionally "
                                 "nn.TemporalMaxPooling)")
        conv, threshold = modules[position], modules[position + 1]
        width, stride = integer_field(conv, "kW", high=SEQUENCE_LENGTH), integer_field(conv, "dW")
        channels = integer_field(conv, "outputFrameSize")
        if integer_field(conv, "inputFrameSize") != inputs:
            what = "the alphabet" if not layers else "the previous convolution's output"
            raise LayoutMismatch(f"convolution {len(layers) + 1} takes {conv.fields['inputFrameSize']:g} "
                                 f"channels, not the {inputs} of {what}")
        weight = tensor_field(conv, "weight", (channels, width * inputs))
        bias = tensor_field(conv, "bias", (channels,))
        thresholds.add((number_field(threshold, "threshold"), number_field(threshold, "val")))
        pool = None
        if len(names) == 3 and names[2] == "nn.TemporalMaxPooling":
            pool_module = modules[position + 2]
            pool = (integer_field(pool_module, "kW", high=SEQUENCE_LENGTH), integer_field(pool_module, "dW"))
        layers.append((channels, width, stride, pool, weight, bias))
        inputs = channels
        position += 3 if pool else 2
    if not layers:
        raise LayoutMismatch("the CNN has no modules")
    if len(thresholds) != 1:
        raise LayoutMismatch(f"the CNN's nn.Threshold modules differ {sorted(thresholds)}; one setting "
                                  "is supported")
    return layers, thresholds.pop()


def read_rnn(gmodule, size):
    """({role: [weight, bias] as read}, {"rnn": its type, "steps",
    "average", "positions": {role: position}}) of the RNN gModule, from its
    graph."""
    graph = Graph(gmodule)
    steps = rnn_steps(gmodule, graph)
    if steps == 1:
        step_inputs = [graph.innode]
    else:
        selects = {_whole(node.data.get("selectindex")): node for node in graph.nodes
                   if "selectindex" in node.data}
        if set(selects) != set(range(1, steps + 1)):
            raise LayoutMismatch(f"the RNN's {steps} inputs are not split from one input")
        step_inputs = [selects[k] for k in range(1, steps + 1)]
    output = graph.output.source()
    average = output.typename == "nn.MulConstant" and len(output.inputs) == 1
    if average:  # the sum of the states, or the only state
        total = output.inputs[0].source()
        last_states = [total] + total.inputs
    else:
        last_states = [output]
    for rnn, (first_step, later_step) in STEP_PATTERNS.items():
        for last in last_states:
            chain = state_chain(last, step_inputs, first_step, later_step)
            if chain is not None and (not average or is_mean(output, chain[0])):
                return tied_weights(chain[1], size), {"rnn": rnn, "steps": steps, "average": average,
                                                      "positions": role_positions(graph, chain[1])}
    raise LayoutMismatch(f"the RNN ({steps} steps) computes neither FixedGRU's nor FixedRNN's formula (or "
                              "the mean of its states)")


def rnn_steps(gmodule, graph):
    """The RNN gModule's number of inputs (``nInputs``; gModules of old nngraph
    versions lack it and have as many split outputs)."""
    if "nInputs" in gmodule.fields:
        return integer_field(gmodule, "nInputs", high=SEQUENCE_LENGTH)
    return max(1, sum("selectindex" in node.data for node in graph.nodes))


def state_chain(last, step_inputs, first_step, later_step):
    """([h1 .. hT], [bindings of each step]) when ``last`` is the last hidden
    state of the recurrence (first_step, later_step) over ``step_inputs``."""
    states, steps, node = [last.source()], [], last
    for t in range(len(step_inputs) - 1, 0, -1):
        bound = first_match(later_step, node, {"x": step_inputs[t].source()})
        if bound is None:
            return None
        steps.append(bound)
        node = bound["h"]
        states.append(node)
    bound = first_match(first_step, node, {"x": step_inputs[0].source()})
    if bound is None:
        return None
    return states[::-1], [bound] + steps[::-1]


def is_mean(output, states):
    """Whether ``output`` is MulConstant(1 / T) of h1 + h2 + ... + hT (left to right)."""
    scale = constant(output)
    if scale is None or not math.isclose(scale, 1.0 / len(states), rel_tol=1e-12):
        return False
    node = output.inputs[0].source()
    for state in states[:0:-1]:
        operands = [n.source() for n in node.inputs]
        if node.typename != "nn.CAddTable" or len(operands) != 2 or state not in operands:
            return False
        node = operands[1] if operands[0] is state else operands[0]
    return node is states[0]


def tied_weights(steps, size):
    """{role: [weight, bias] as read}, after checking that every step's
    Linear of a role holds the same weights."""
    weights = {}
    for t, bound in enumerate(steps):
        for role in [name for name in bound if name not in ("x", "h", "update")]:
            values = linear_weights(bound[role].module, size, size)
            if role not in weights:
                weights[role] = values
            elif not all(np.array_equal(a, b) for a, b in zip(weights[role], values)):
                raise LayoutMismatch(f"step {t + 1}'s {role} Linear holds other weights than the first "
                                  "step's; the steps must share them")
    return weights


def role_positions(graph, steps):
    """{role: 0-based position of its first module in the gModule's ``modules``}."""
    positions = {}
    for bound in steps:
        for role, node in bound.items():
            position = graph.position(node) if role not in ("x", "h", "update") else None
            if position is not None:
                positions[role] = min(positions.get(role, position), position)
    return positions


def find_encoder(obj):
    """(the encoder module, where it was found) of a loaded file."""
    if isinstance(obj, dict) and "protos" in obj:
        protos = obj["protos"]
        module = protos.get("enc_doc") if isinstance(protos, dict) else None
        if module is None:
            raise LayoutMismatch("a checkpoint without protos.enc_doc")
        return module, "trainer checkpoint (protos.enc_doc)"
    return obj, "module"


def describe_found(obj):
    if isinstance(obj, torch7.TorchObject):
        return obj.typename
    if isinstance(obj, dict):
        keys = ", ".join(sorted(shown(key, 20) for key in obj)[:5])
        return f"a table ({keys})" if keys else "an empty table"
    return type(obj).__name__


def load_torch7_encoder(path):
    """The authors' encoder in ``path`` as a CharCNNRNN with its weights, and
    a dict describing it: source, rnn, steps, average, positions (each RNN
    role's first module in the RNN gModule's ``modules``)."""
    try:
        obj = torch7.load(path)
    except torch7.Torch7Error as exc:
        raise TextEncoderError(str(exc)) from None
    except OSError as exc:
        raise TextEncoderError(f"{path}: cannot read it ({exc.strerror or exc}).") from None
    try:
        model, info = build_encoder(obj)
    except LayoutMismatch as exc:
        raise TextEncoderError(f"{path}: not a char-CNN-RNN text encoder of the authors' layout ({exc}); "
                               "give their .t7 file (see README, 'Your own captions').") from None
    return model, {"path": path, **info}


def build_encoder(obj):
    module, source = find_encoder(obj)
    if _typename(module) != "nn.gModule":
        raise LayoutMismatch(f"found {shown(describe_found(module))}, expected an nn.gModule")
    graph = Graph(module)
    bound = first_match(ENCODER_PATTERN, graph.output, {})
    if bound is None or bound["input"] is not graph.innode.source():
        found = " -> ".join(str(n.typename) for n in graph.nodes if n.module is not None)
        raise LayoutMismatch(f"its graph is {shown(found, 200)}; expected nn.Sequential (CNN) -> "
                             "nn.SplitTable -> nn.gModule (RNN) -> nn.Dropout -> nn.Linear")
    layers, (threshold, threshold_value) = read_cnn(bound["cnn"].module)
    split = bound["split"].module
    if number_field(split, "dimension") != 2 or split.fields.get("nInputDims") is not None:
        raise LayoutMismatch("its nn.SplitTable does not split the frames (dimension 2)")
    size = layers[-1][0]
    gates, info = read_rnn(bound["rnn"].module, size)
    dropout = bound["dropout"].module
    rate = number_field(dropout, "p")
    if not 0 <= rate < 1 or (rate > 0 and dropout.fields.get("stochastic_inference")):
        raise LayoutMismatch(f"its nn.Dropout has p {rate} (or drops at inference), which get_embedding.lua "
                             "cannot have used")
    projection = linear_weights(bound["projection"].module, size)
    channels, widths, strides, pools = ([layer[i] for layer in layers] for i in range(4))
    frames = SEQUENCE_LENGTH
    for width, stride, pool in zip(widths, strides, pools):
        frames = frames_after(frames, width, stride)
        frames = frames_after(frames, *pool) if pool else frames
    if frames != info["steps"]:
        raise LayoutMismatch(f"its CNN gives {frames} frames of {SEQUENCE_LENGTH} bytes but its RNN takes "
                             f"{info['steps']}")
    parts = {f"conv{i + 1}": list(layer[4:]) for i, layer in enumerate(layers)}
    parts.update(gates, projection=projection)
    weights = checked_weights(parts)
    model = CharCNNRNN(conv_channels=channels, conv_widths=widths, conv_strides=strides, pools=pools,
                       rnn=info["rnn"], average=info["average"], embedding_dim=len(projection[1]),
                       dropout=rate, dropout_scaled_in_training=bool(dropout.fields.get("v2")),
                       threshold=threshold, threshold_value=threshold_value)
    for name, (weight, bias) in weights.items():
        layer = model.get_layer(name)
        if isinstance(layer, keras.layers.Conv1D):  # torch: weight[o, k * inputs + c], frame-major windows
            weight = weight.reshape(layer.filters, layer.kernel_size[0], -1).transpose(1, 2, 0)
        else:  # torch's Linear: outputs x inputs
            weight = weight.T
        layer.set_weights([weight, bias])
    return model, {"source": source, **info}
