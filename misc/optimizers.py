"""Adam exactly as TensorFlow 1's ``AdamOptimizer`` (the reference's)."""

import keras
from keras import ops


class ReferenceAdam(keras.optimizers.Adam):
    """Keras Adam with the arithmetic of TF1's ``ApplyAdam`` kernel.

    The update is the same as Keras's (epsilon added to sqrt(v), bias
    correction folded into the step size); the difference is that
    ``1 - beta`` is computed in float32 from the float32 beta, as the TF1
    kernel does (``1 - 0.999f``), instead of in float64.  The bias-correction
    powers are ``beta ** t`` (TF1 accumulated them by repeated multiplication;
    the two agree to float32 rounding).
    """

    def __init__(self, learning_rate=2e-4, beta_1=0.5, beta_2=0.999, epsilon=1e-8, **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1 = ops.cast(self.beta_1, dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        alpha = lr * ops.sqrt(1 - ops.power(beta_2, step)) / (1 - ops.power(beta_1, step))
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, (gradient - m) * (1 - beta_1))
        self.assign_add(v, (ops.square(gradient) - v) * (1 - beta_2))
        self.assign_sub(variable, (m * alpha) / (ops.sqrt(v) + self.epsilon))

    def slots(self, variable):
        """(m, v) of ``variable`` (reference names ``<var>/Adam``, ``<var>/Adam_1``)."""
        index = self._get_variable_index(variable)
        return self._momentums[index], self._velocities[index]

    def beta_powers(self):
        """The reference's ``beta1_power``/``beta2_power`` before the next step."""
        step = float(self.iterations.numpy()) + 1.0
        return self.beta_1 ** step, self.beta_2 ** step
