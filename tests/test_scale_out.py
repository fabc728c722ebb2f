"""Data parallelism at full size: all of Fashion-MNIST on 2 and 8 (fake CPU) devices trains like
one device. Before the feed loop waited for its oldest call (MAX_CALLS_IN_FLIGHT), XLA:CPU's
all-reduce aborted here after 40 s ("only 1 of them arrived"), while the small tests passed.

One epoch's losses agree to float-rounding drift: the device sums are added in another order,
and 468 steps let the difference grow a little."""

import numpy as np
import pytest
from jax.sharding import Mesh

from conftest import require_fashion_mnist
from jaxcnn import config as config_lib
from jaxcnn import datasets, train


def one_epoch(devices):
    config = config_lib.resolve({"data": {"dataset": "fashion_mnist"}, "epochs": 1,
                                 "batch_size": 128})
    trainer = train.Trainer(config, datasets.load("fashion_mnist"), Mesh(np.array(devices), (train.AXIS,)))
    return {**trainer.train_epoch(0), **trainer.evaluate()}


@pytest.fixture(scope="module")
def single(devices):
    require_fashion_mnist()
    return one_epoch(devices[:1])


def check_same_curve(a, b):
    assert a["test_count"] == b["test_count"] == 10_000
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=5e-3)
    np.testing.assert_allclose(b["test_loss"], a["test_loss"], rtol=2e-2)
    assert abs(b["test_accuracy"] - a["test_accuracy"]) < 0.01


def test_full_fashion_mnist_on_2_devices_trains_like_1(single, devices):
    check_same_curve(single, one_epoch(devices[:2]))


@pytest.mark.slow
def test_full_fashion_mnist_on_8_devices_trains_like_1(single, devices):
    check_same_curve(single, one_epoch(devices))

