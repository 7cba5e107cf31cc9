"""Keras layers that compute exactly what the reference StackGAN ops compute.

Each weighted layer knows the variable names the reference graph (prettytensor
on TensorFlow 0.11) gave its variables, so checkpoints written by the
reference can be mapped onto our models by name (``reference_variables``).

Reference semantics reproduced here (docs/reference_quirks.md#q3, #q6, #q9, #q10):
  * convolutions have no bias, kernels ~ truncated normal(0.02), SAME padding;
  * fully connected layers: weights ~ normal(0.02), bias 0, input flattened;
  * transposed convolutions (the 'simple' network): weights ~ normal(0.02);
  * batch norm: gamma ~ N(1, 0.02), beta 0, epsilon 1e-5; in training the
    batch statistics are the single-pass E[x^2] - E[x]^2 (TF <= 0.12
    ``tf.nn.moments``) and each call updates the moving statistics with the
    plain exponential moving average ``v <- v - (v - x) * (1 - decay)``
    (TF <= 0.11, no zero-debiasing); at inference the moving statistics are
    used.  Under a multi-replica ``tf.distribute`` strategy the statistics are
    summed over all replicas, so N replicas compute what one device computes
    on the whole batch;
  * up-sampling is the legacy nearest-neighbour resize (no half-pixel shift);
  * leaky ReLU is ``max(x, 0.2 x)``.
"""

import keras
import tensorflow as tf


class ReferenceNamer:
    """Hands out layer names the way prettytensor numbered its method scopes.

    Inside one network scope every call of a method name gets the next number:
    ``custom_conv2d``, ``custom_conv2d_1``, ... (numbered independently per
    method name).  Building a network in the reference's construction order
    therefore reproduces its variable names.
    """

    def __init__(self):
        self._counts = {}

    def __call__(self, method):
        index = self._counts.get(method, 0)
        self._counts[method] = index + 1
        return method if index == 0 else f"{method}_{index}"


class ReferenceLayer(keras.layers.Layer):
    """A layer whose variables have names in the reference checkpoints."""

    def reference_variables(self):
        """Map of reference variable name (below the network scope) -> variable."""
        raise NotImplementedError


class Conv2D(ReferenceLayer):
    """Bias-free convolution, SAME padding (reference ``custom_conv2d``)."""

    def __init__(self, filters, kernel_size, strides=1, stddev=0.02, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.stddev = stddev

    def build(self, input_shape):
        k = self.kernel_size
        self.w = self.add_weight(
            shape=(k, k, int(input_shape[-1]), self.filters),
            initializer=keras.initializers.TruncatedNormal(stddev=self.stddev),
            name="w",
        )

    def call(self, x):
        w = tf.cast(self.w, x.dtype)
        return tf.nn.conv2d(x, w, strides=self.strides, padding="SAME")

    def reference_variables(self):
        return {f"{self.name}/{self.name}/w": self.w}


class Deconv2D(ReferenceLayer):
    """Bias-free transposed convolution doubling the resolution
    (reference ``custom_deconv2d`` with 4x4 kernels and stride 2)."""

    def __init__(self, filters, kernel_size=4, strides=2, stddev=0.02, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.stddev = stddev

    def build(self, input_shape):
        k = self.kernel_size
        # Transposed-conv filters are laid out [height, width, out, in].
        self.w = self.add_weight(
            shape=(k, k, self.filters, int(input_shape[-1])),
            initializer=keras.initializers.RandomNormal(stddev=self.stddev),
            name="w",
        )

    def call(self, x):
        shape = tf.shape(x)
        out_shape = tf.stack(
            [shape[0], shape[1] * self.strides, shape[2] * self.strides, self.filters]
        )
        y = tf.nn.conv2d_transpose(
            x, tf.cast(self.w, x.dtype), out_shape, strides=self.strides, padding="SAME"
        )
        static = x.shape
        if static[1] is not None and static[2] is not None:
            y = tf.ensure_shape(
                y, (None, static[1] * self.strides, static[2] * self.strides, self.filters)
            )
        return y

    def reference_variables(self):
        return {f"{self.name}/{self.name}/w": self.w}


class Dense(ReferenceLayer):
    """Fully connected layer on the flattened input
    (reference ``custom_fully_connected``: ``<name>/Linear/{Matrix,bias}``)."""

    def __init__(self, units, stddev=0.02, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.stddev = stddev

    def build(self, input_shape):
        fan_in = 1
        for d in input_shape[1:]:
            fan_in *= int(d)
        self.matrix = self.add_weight(
            shape=(fan_in, self.units),
            initializer=keras.initializers.RandomNormal(stddev=self.stddev),
            name="Matrix",
        )
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, x):
        if x.shape.rank != 2:
            x = tf.reshape(x, (tf.shape(x)[0], -1))
        return tf.matmul(x, tf.cast(self.matrix, x.dtype)) + tf.cast(self.bias, x.dtype)

    def reference_variables(self):
        return {f"{self.name}/Linear/Matrix": self.matrix, f"{self.name}/Linear/bias": self.bias}


def accumulation_dtype(dtype):
    """The dtype of statistics and losses: float32, or float64 for float64
    computations (the tests' exact evaluation)."""
    return tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32


def replica_context():
    """The replica context of a step that runs on several replicas of a
    ``tf.distribute`` strategy; None on one replica (or outside a step)."""
    ctx = tf.distribute.get_replica_context()
    return None if ctx is None or ctx.num_replicas_in_sync == 1 else ctx


def replica_sum(values):
    """Tensors (a structure of them) summed over the replicas of the current
    step; themselves on one replica."""
    ctx = replica_context()
    return values if ctx is None else ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)


def channel_sums(x):
    """Sum and sum of squares over all axes but the last (the single-pass
    moments' sufficient statistics), with a one-pass gradient
    ``d_total + 2 * d_total_sq * x`` (the same values as autodiff's, without
    its two tiled copies of the per-channel gradients)."""
    axes = list(range(x.shape.rank - 1))

    @tf.custom_gradient
    def sums(x):
        def gradient(d_total, d_total_sq):
            d_x = tf.zeros_like(x) if d_total is None else d_total
            if d_total_sq is not None:
                d_x = d_x + (2 * d_total_sq) * x
            return d_x

        return (tf.reduce_sum(x, axes), tf.reduce_sum(tf.square(x), axes)), gradient

    return sums(x)


def normalize(x, mean, variance, offset, scale, epsilon):
    """The reference's ``batch_normalization``: ``x * inv + (offset - mean *
    inv)`` with ``inv = scale / sqrt(variance + epsilon)`` (per-channel
    ``mean``, ``variance``, ``offset``, ``scale``).

    In float32 the gradient -- to every input: batch statistics depend on
    ``x`` too -- comes from TensorFlow's fused batch-norm gradient kernel
    given the statistics (``FusedBatchNormGradV3``, one kernel for the input,
    scale and offset gradients instead of five passes); the statistics'
    gradients follow from the scale and offset ones.  Other dtypes (the
    tests' float64) differentiate the formula itself."""
    if x.dtype != tf.float32:
        return tf.nn.batch_normalization(x, mean, variance, offset, scale, epsilon)

    @tf.custom_gradient
    def forward(x, mean, variance, offset, scale):
        rsqrt = tf.math.rsqrt(variance + epsilon)
        inv = rsqrt * scale

        def gradient(dy):
            maps = x if x.shape.rank == 4 else tf.reshape(x, [-1, 1, 1, x.shape[-1]])
            d_maps, d_scale, d_offset, _, _ = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=tf.reshape(dy, tf.shape(maps)), x=maps, scale=scale,
                reserve_space_1=mean, reserve_space_2=variance, reserve_space_3=tf.zeros([0]),
                epsilon=epsilon, data_format="NHWC", is_training=False)
            d_mean = -inv * d_offset
            d_variance = (-0.5 * scale) * d_scale * tf.square(rsqrt)
            return tf.reshape(d_maps, tf.shape(x)), d_mean, d_variance, d_offset, d_scale

        return x * inv + (offset - mean * inv), gradient

    return forward(x, mean, variance, offset, scale)


class BatchNorm(ReferenceLayer):
    """Batch normalisation with the reference (TF 0.11) semantics.

    Works on NHWC maps (statistics over batch, height, width) and on (B, C)
    features (statistics over the batch: the reference ``fc_batch_norm``).
    ``scope`` is the reference variable scope below the network; it defaults
    to ``<name>/<name>`` (prettytensor doubles the scope of ``conv_batch_norm``).
    """

    def __init__(self, decay=0.9, epsilon=1e-5, scope=None, **kwargs):
        super().__init__(**kwargs)
        self.decay = decay
        self.epsilon = epsilon
        self.scope = scope or f"{self.name}/{self.name}"

    def build(self, input_shape):
        channels = (int(input_shape[-1]),)
        # Sync-BN makes every replica compute identical statistics, so taking
        # the first replica's update of the moving statistics is exact.
        self.moving_mean = self.add_weight(
            shape=channels, initializer="zeros", trainable=False, name="mean",
            aggregation="only_first_replica", autocast=False,
        )
        self.moving_variance = self.add_weight(
            shape=channels, initializer="ones", trainable=False, name="variance",
            aggregation="only_first_replica", autocast=False,
        )
        self.gamma = self.add_weight(
            shape=channels,
            initializer=keras.initializers.RandomNormal(mean=1.0, stddev=0.02),
            name="gamma",
        )
        self.beta = self.add_weight(shape=channels, initializer="zeros", name="beta")

    def batch_moments(self, x):
        """Single-pass moments over all axes but the last, across replicas."""
        dtype = accumulation_dtype(x.dtype)
        x = tf.cast(x, dtype)
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), dtype)
        total, total_sq = channel_sums(x)
        total, total_sq, count = replica_sum([total, total_sq, count])
        divisor = tf.math.reciprocal(count)
        mean = total * divisor
        variance = total_sq * divisor - tf.square(mean)
        return mean, variance

    def update_moving_statistics(self, mean, variance):
        dtype = self.moving_mean.dtype
        mean, variance = tf.cast(mean, dtype), tf.cast(variance, dtype)
        rate = tf.constant(1.0 - self.decay, dtype)
        self.moving_mean.assign_sub((self.moving_mean - mean) * rate)
        self.moving_variance.assign_sub((self.moving_variance - variance) * rate)

    def call(self, x, training=False):
        if training:
            mean, variance = self.batch_moments(x)
            self.update_moving_statistics(mean, variance)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        dtype = accumulation_dtype(x.dtype)
        y = normalize(tf.cast(x, dtype), tf.cast(mean, dtype), tf.cast(variance, dtype),
                      tf.cast(self.beta, dtype), tf.cast(self.gamma, dtype), self.epsilon)
        return tf.cast(y, x.dtype)

    def reference_variables(self):
        return {
            f"{self.scope}/mean": self.moving_mean,
            f"{self.scope}/variance": self.moving_variance,
            f"{self.scope}/gamma": self.gamma,
            f"{self.scope}/beta": self.beta,
        }


def leaky_relu(x, leakiness=0.2):
    """``max(x, leakiness * x)`` (the reference's ``leaky_rectify``), as
    TensorFlow's one-op ``LeakyRelu``: the same values for any leakiness
    below 1, and one gradient op instead of five.  The two differ only in
    the derivative at exactly 0, the kink, where ``Maximum``'s gradient
    takes 1 and ``LeakyReluGrad`` the leakiness."""
    return tf.nn.leaky_relu(x, alpha=leakiness)


def resize_nearest(x, size):
    """Legacy nearest-neighbour resize: source index = floor(dst * in / out)
    (docs/reference_quirks.md#q6), the reference's ``ResizeNearestNeighbor``.

    For integer factors (all the networks use x2) each pixel is repeated, so
    the gradient is the sum over each factor x factor block; it is taken
    with an average pool times the block size (exact: a power-of-two scale).
    That is as fast as the op's own ``ResizeNearestNeighborGrad``, which XLA
    cannot compile, and ~10x faster than differentiating a broadcast."""
    h, w = x.shape[1], x.shape[2]
    if h and w and size[0] % h == 0 and size[1] % w == 0:
        return _repeat_pixels(x, (size[0] // h, size[1] // w))
    return _resize_nearest_op(x, size)


def _resize_nearest_op(x, size):
    return tf.raw_ops.ResizeNearestNeighbor(
        images=x, size=size, align_corners=False, half_pixel_centers=False)


def _repeat_pixels(x, factors):
    @tf.custom_gradient
    def repeat(x):
        def block_sum(dy):
            pooled = tf.nn.avg_pool2d(dy, factors, factors, "VALID")
            return pooled * tf.constant(factors[0] * factors[1], dy.dtype)
        return _resize_nearest_op(x, (x.shape[1] * factors[0], x.shape[2] * factors[1])), block_sum
    return repeat(x)


def downsample_like_reference(images, size):
    """The reference's legacy bilinear resize (no half-pixel shift); for an
    integer ratio r it picks the top-left pixel of each r x r block
    (docs/reference_quirks.md#q6)."""
    return tf.raw_ops.ResizeBilinear(
        images=images, size=size, align_corners=False, half_pixel_centers=False)


def tile_to_map(code, size):
    """(B, C) -> (B, size, size, C), the code repeated at every position."""
    return tf.tile(code[:, None, None, :], [1, size, size, 1])


class Apply(keras.layers.Layer):
    """A stateless step (activation, resize) of a ``Chain``, as a layer."""

    def __init__(self, fn, **kwargs):
        super().__init__(**kwargs)
        self.fn = fn

    def call(self, x):
        return self.fn(x)


def track_layers(owner, prefix, layers):
    """Attach ``layers`` to ``owner`` as attributes ``<prefix>_<i>``.

    Keras 3 keeps list attributes in its own containers, which
    ``tf.train.Checkpoint`` does not see: the variables of layers held only
    in a list would silently be missing from checkpoints.  Attributes are
    tracked by both.
    """
    for index, layer in enumerate(layers):
        setattr(owner, f"{prefix}_{index}", layer)
    return [getattr(owner, f"{prefix}_{index}") for index in range(len(layers))]


class Chain(keras.layers.Layer):
    """Apply layers and functions in order, passing ``training`` to the
    layers that take it (batch norm).  Functions become ``Apply`` layers."""

    def __init__(self, steps, **kwargs):
        super().__init__(**kwargs)
        layers = [s if isinstance(s, keras.layers.Layer) else Apply(s) for s in steps]
        self._num_steps = len(layers)
        track_layers(self, "step", layers)

    @property
    def steps(self):
        return [getattr(self, f"step_{i}") for i in range(self._num_steps)]

    def call(self, x, training=False):
        for step in self.steps:
            if isinstance(step, (BatchNorm, Chain)):
                x = step(x, training=training)
            else:
                x = step(x)
        return x


class ReferenceNetwork(keras.Model):
    """A network of the reference graph; ``scope`` is its TF1 variable scope
    (``g_net``, ``d_net``, ``hr_g_net``, ``hr_d_net``)."""

    scope = None

    def reference_variables(self):
        """All reference-named variables: ``{scope/name: variable}``."""
        found = {}
        for layer in self._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, ReferenceLayer):
                for name, var in layer.reference_variables().items():
                    full = f"{self.scope}/{name}"
                    if full in found:
                        raise ValueError(f"two layers of {self.scope} claim the variable name {full}")
                    found[full] = var
        return found
