"""The learning-rate schedule against the reference training loop."""

import pytest

from misc.training.gan_trainer import learning_rate_for_epoch


def reference_rates(base, epochs, decay_every, decay_after):
    """The rate at each epoch as the reference loop computed it from epoch 0:
    halved at the start of every epoch e with e % decay_every == 0 and
    e > decay_after (Stage-I: e != 0)."""
    rates, rate = [], base
    for epoch in range(epochs):
        if epoch % decay_every == 0 and epoch > decay_after:
            rate *= 0.5
        rates.append(rate)
    return rates


@pytest.mark.parametrize("decay_every, decay_after", [(50, 0), (100, 600), (20, 0), (7, 30), (100, 650)])
def test_any_epoch_gets_the_rate_of_an_uninterrupted_run(decay_every, decay_after):
    expected = reference_rates(2e-4, 1300, decay_every, decay_after)
    ours = [learning_rate_for_epoch(2e-4, e, decay_every, decay_after) for e in range(1300)]
    assert ours == pytest.approx(expected, rel=1e-12)


def test_reference_configs():
    # Stage-I birds: halved at 50, 100, ...; Stage-II: at 700, 800, ... (after PRETRAINED_EPOCH 600)
    assert learning_rate_for_epoch(2e-4, 49, 50) == 2e-4
    assert learning_rate_for_epoch(2e-4, 50, 50) == 1e-4
    assert learning_rate_for_epoch(2e-4, 599, 50) == pytest.approx(2e-4 / 2 ** 11)
    assert learning_rate_for_epoch(2e-4, 699, 100, decay_after=600) == 2e-4
    assert learning_rate_for_epoch(2e-4, 700, 100, decay_after=600) == 1e-4
