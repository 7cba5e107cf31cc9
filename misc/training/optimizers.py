"""Adam exactly as TensorFlow 1's ``AdamOptimizer`` (the reference's)."""

import keras
import tensorflow as tf


def _handle(variable):
    """The resource handle of a (Keras or TensorFlow, possibly mirrored)
    variable; inside ``tf.distribute``'s update of a replica's copy a mirrored
    variable hands out that replica's handle."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle


class ReferenceAdam(keras.optimizers.Adam):
    """Keras Adam on the kernel the reference ran: TensorFlow's fused
    ``ApplyAdam`` (``tf.raw_ops.ResourceApplyAdam``, one pass over each
    variable and its two slots; XLA compiles it too).

    Its arithmetic is TF1's: ``m += (g - m) * (1 - beta1)``, ``v += (g^2 - v)
    * (1 - beta2)``, ``w -= lr_t * m / (sqrt(v) + epsilon)`` with
    ``lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)`` and ``1 - beta``
    computed in the variable's dtype from the beta in that dtype (the kernel's
    ``1 - 0.999f``), which is where Keras's own Adam differs.  The
    bias-correction powers are ``beta ** t`` (TF1 accumulated them by repeated
    multiplication; the two agree to float32 rounding).

    The slots keep Keras's layout (``momentum``/``velocity`` variables, the
    step count in ``iterations``), so checkpoints of earlier versions of this
    optimizer load unchanged.
    """

    def __init__(self, learning_rate=2e-4, beta_1=0.5, beta_2=0.999, epsilon=1e-8, **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.constant(self.beta_1, dtype)
        beta_2 = tf.constant(self.beta_2, dtype)
        m, v = self.slots(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(m), v=_handle(v),
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype), beta1=beta_1, beta2=beta_2,
            epsilon=tf.constant(self.epsilon, dtype), grad=tf.cast(gradient, dtype),
            use_locking=False, use_nesterov=False)

    def slots(self, variable):
        """(m, v) of ``variable`` (reference names ``<var>/Adam``, ``<var>/Adam_1``)."""
        index = self._get_variable_index(variable)
        return self._momentums[index], self._velocities[index]

    def beta_powers(self):
        """The reference's ``beta1_power``/``beta2_power`` before the next step."""
        step = float(self.iterations.numpy()) + 1.0
        return self.beta_1 ** step, self.beta_2 ** step
