"""Smoke runs of every Fashion-MNIST experiment: the config resolves, the model builds (checked at
full size without creating weights), and two jitted training steps on 8 random 28x28 images give
finite losses and an updated state. AlexNet and VGG-16 run those steps with 64-wide fc6/fc7
instead of 4096 (their 100 M dense weights would cost most of the time); the rest run as
configured."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn import config as config_lib
from jaxcnn import optim
from jaxcnn.models import from_config
from jaxcnn.train import create_train_state, train_step

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "experiments")
# --set strings that shrink a model for the smoke steps (the shapes are checked at full size).
TINY = {"alexnet_fashion.py": ["model.fc_width=64"], "vgg16_fashion.py": ["model.fc_width=64"]}
FASHION = sorted(os.path.basename(p) for p in glob.glob(os.path.join(EXPERIMENTS, "*_fashion.py")))
CIFAR = sorted(os.path.basename(p) for p in glob.glob(os.path.join(EXPERIMENTS, "*_cifar10.py")))


@pytest.fixture
def fast_compile():
    """XLA without most optimisations: these tests run two steps, compiling is the cost."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def test_every_model_family_has_a_fashion_and_a_cifar10_experiment():
    families = {"lenet5_classic", "alexnet", "vgg16", "googlenet", "resnet18", "resnet20"}
    assert families <= {f[: -len("_fashion.py")] for f in FASHION}
    cifar_models = {config_lib.load_experiment(os.path.join(EXPERIMENTS, f))["model"]["name"] for f in CIFAR}
    assert {"lenet5_classic", "alexnet", "vgg16_bn", "googlenet", "resnet18", "resnet20",
            "resnet14"} <= cifar_models


@pytest.mark.parametrize("name", CIFAR)
def test_cifar10_experiments_resolve_and_build(name):
    config = config_lib.resolve(config_lib.load_experiment(os.path.join(EXPERIMENTS, name)))
    assert config["data"]["dataset"] == "cifar10"
    model = from_config(config["model"], 10)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    out = jax.eval_shape(lambda x: model.apply(model.init(jax.random.key(0), x), x), x)
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name", FASHION)
def test_fashion_experiment_takes_two_finite_training_steps(name, fast_compile):
    experiment = config_lib.load_experiment(os.path.join(EXPERIMENTS, name))
    full = config_lib.resolve(experiment)
    assert full["data"]["dataset"] == "fashion_mnist"
    model = from_config(full["model"], 10)
    x = jax.ShapeDtypeStruct((8, 28, 28, 1), jnp.float32)
    assert jax.eval_shape(lambda x: model.apply(model.init(jax.random.key(0), x), x), x).shape == (8, 10)

    config = config_lib.resolve(experiment, ["batch_size=8", *TINY.get(name, [])])
    model = from_config(config["model"], 10)
    tx = optim.make_optimizer(config, optim.make_schedule(config, 10))
    state = create_train_state(model, tx, (28, 28, 1), config["seed"])
    k1, k2 = jax.random.split(jax.random.key(1))
    batch = {"image": jax.random.normal(k1, (8, 28, 28, 1)),
             "label": jax.random.randint(k2, (8,), 0, 10)}
    step = jax.jit(lambda s, b: train_step(s, b, None, config["label_smoothing"], config["aux_loss_weight"]))
    before = state.params
    for _ in range(2):
        state, metrics = step(state, batch)
        assert np.isfinite(float(metrics["loss"])) and int(metrics["count"]) == 8
    assert int(state.step) == 2
    assert not np.array_equal(np.asarray(jax.tree.leaves(before)[0]), np.asarray(jax.tree.leaves(state.params)[0]))
    if "aux1" in state.params:  # GoogLeNet: the auxiliary losses reach the heads (biases: no decay)
        for head in ("aux1", "aux2"):
            assert not np.array_equal(before[head]["fc2"]["bias"], state.params[head]["fc2"]["bias"])


@pytest.mark.parametrize("name, num_classes", [("resnet50_imagenet.py", 1000),
                                               ("resnet18_imagefolder.py", 5)])
def test_streamed_imagenet_style_experiments_resolve_and_build(name, num_classes):
    config = config_lib.resolve(config_lib.load_experiment(os.path.join(EXPERIMENTS, name)))
    data = config["data"]
    assert data["image_size"] == 224 and data["random_resized_crop"] and data["flip"]
    assert config["optimizer"]["name"] == "momentum" and config["optimizer"]["weight_decay"] == 1e-4
    assert config["optimizer"]["learning_rate"] == pytest.approx(0.1 * config["batch_size"] / 256)
    assert config["schedule"]["name"] == "warmup_cosine" and config["label_smoothing"] == 0.1
    model = from_config(config["model"], num_classes)
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    assert logits.shape == (2, num_classes)
    if name == "resnet50_imagenet.py":
        assert data["dataset"] == "imagenet2012" and config["epochs"] == 90
        assert config["schedule"]["warmup_epochs"] == 5
        params = sum(p.size for p in jax.tree.leaves(variables["params"]))
        assert params == 25_557_032  # torchvision's resnet50
