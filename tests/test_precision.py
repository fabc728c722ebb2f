"""precision: 'bfloat16' computes in bfloat16 while parameters, optimizer state, BatchNorm
statistics, the loss and checkpoints stay float32; it learns as float32 does."""

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from conftest import require_fashion_mnist
from jaxcnn import config as config_lib
from jaxcnn import datasets
from jaxcnn.feed import limit
from jaxcnn.train import AXIS, Trainer

CNN_BN = {"name": "cnn", "cdims": [16, 32], "hdims": [32], "ksize": 3, "batch_norm": True,
          "dropout": 0.1}


def train(precision: str):
    config = config_lib.resolve({"model": CNN_BN, "precision": precision, "epochs": 2,
                                 "batch_size": 128, "data": {"dataset": "fashion_mnist"}})
    data = limit(datasets.load("fashion_mnist"), 12_800, None)
    trainer = Trainer(config, data, Mesh(np.array(jax.devices()[:1]), (AXIS,)))
    history = [{**trainer.train_epoch(e), **trainer.evaluate()} for e in range(2)]
    return trainer, history


def test_bfloat16_computes_in_bfloat16_keeps_float32_state_and_learns_like_float32():
    require_fashion_mnist()
    t32, h32 = train("float32")
    t16, h16 = train("bfloat16")
    _, inside = t16.model.apply(t16.variables(), jnp.ones((2, 28, 28, 1)), train=False,
                                capture_intermediates=True, mutable=["intermediates"])
    assert inside["intermediates"]["conv1"]["__call__"][0].dtype == jnp.bfloat16
    for leaf in jax.tree.leaves((t16.state.params, t16.state.opt_state, t16.state.batch_stats)):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            assert leaf.dtype == jnp.float32
    assert h16[-1]["test_count"] == 10_000
    assert abs(h16[-1]["test_accuracy"] - h32[-1]["test_accuracy"]) < 0.01, (h16, h32)
    assert h16[-1]["test_accuracy"] > 0.8


def test_a_bfloat16_run_restores_float32_variables(tmp_path):
    require_fashion_mnist()
    from jaxcnn import restore
    from jaxcnn.launch import main

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    workdir = tmp_path / "run"
    assert main([os.path.join(root, "experiments", "lenet_fashion.py"), "--workdir", str(workdir),
                 "--set", "precision=bfloat16", "--set", "epochs=1",
                 "--set", "data.max_train_examples=512", "--set", "data.max_test_examples=100"]) == 0
    run = restore(str(workdir))
    assert run.config["precision"] == "bfloat16"
    assert {leaf.dtype for leaf in jax.tree.leaves(run.variables)} == {np.dtype(np.float32)}
