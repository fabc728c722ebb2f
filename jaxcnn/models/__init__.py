"""Model families, chosen by name.

Every model is a ``flax.linen`` Module taking NHWC images and returning logits:
``model.apply(variables, x, train=False) -> [N, num_classes]``. To add a model, write its
Module in a file of its own in this package (shared initialisers, BatchNorm settings, argument
checks and layers are in ``layers.py``; the model checks its arguments in ``__post_init__``) and
add its name here.

    lenet5, cnn                      modern LeNet-5 and the configurable CNN (lenet.py, cnn.py)
    lenet5_classic                   LeNet-5 exactly as in the 1998 paper (lenet_classic.py)
    alexnet, alexnet_original        torchvision's AlexNet; the paper's two-tower net (alexnet.py)
    vgg11/13/16/19, vgg*_bn          VGG configurations A, B, D, E (vgg.py)
    googlenet                        Inception v1 with auxiliary classifiers (googlenet.py)
    resnet18/34/50/101/152           ImageNet ResNets (resnet.py)
    resnet20/32/44/56/110, resnet14  CIFAR ResNets, 6n+2 (resnet_cifar.py)

The ImageNet architectures take ``small_input=True`` for 28x28 and 32x32 images (each file says
what it changes). ``from_config(config["model"], num_classes)`` builds an experiment's model and
``check_config(config["model"])`` checks its settings without data; ``from_torchvision(name,
state_dict)`` turns torchvision weights into Flax variables; ``python -m jaxcnn.summary NAME``
prints a model's layers.
"""

import dataclasses
import functools

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError, did_you_mean
from jaxcnn.models import resnet, resnet_cifar, vgg
from jaxcnn.models.alexnet import AlexNet, AlexNetOriginal
from jaxcnn.models.cnn import CNN
from jaxcnn.models.googlenet import GoogLeNet
from jaxcnn.models.lenet import LeNet5
from jaxcnn.models.lenet_classic import LeNet5Classic

MODELS: dict[str, type[nn.Module] | functools.partial] = {
    "lenet5": LeNet5,
    "cnn": CNN,
    "lenet5_classic": LeNet5Classic,
    "alexnet": AlexNet,
    "alexnet_original": AlexNetOriginal,
    **{name: functools.partial(vgg.VGG, layers=layers) for name, layers in vgg.LAYERS.items()},
    **{f"{name}_bn": functools.partial(vgg.VGG, layers=layers, batch_norm=True)
       for name, layers in vgg.LAYERS.items()},
    "googlenet": GoogLeNet,
    "resnet18": resnet.ResNet18,
    "resnet34": resnet.ResNet34,
    "resnet50": resnet.ResNet50,
    "resnet101": resnet.ResNet101,
    "resnet152": resnet.ResNet152,
    "resnet14": functools.partial(resnet_cifar.TutorialResNet, blocks_per_stage=2),
    **{f"resnet{depth}": resnet_cifar.cifar_resnet(depth) for depth in (20, 32, 44, 56, 110)},
}

# The input each model was designed for, (H, W, C) and class count; ImageNet otherwise.
_NATIVE_INPUTS = {
    "lenet5": ((28, 28, 1), 10),
    "cnn": ((28, 28, 1), 10),
    "lenet5_classic": ((32, 32, 1), 10),
    **{f"resnet{depth}": ((32, 32, 3), 10) for depth in (14, 20, 32, 44, 56, 110)},
}


def native_input(name: str) -> tuple[tuple[int, int, int], int]:
    """((H, W, C), num_classes) of the data model ``name`` was designed for (224x224x3 and 1000
    classes for the ImageNet architectures); the default of ``python -m jaxcnn.summary``."""
    return _NATIVE_INPUTS.get(name, ((224, 224, 3), 1000))


# Fields that the framework sets itself; experiment files do not pass them.
_RESERVED = ("num_classes", "parent", "name", "axis_name", "conv", "norm")


def model_options(name: str) -> dict:
    """The constructor arguments an experiment may set for model ``name``, with their defaults."""
    cls = MODELS[name]
    fixed = cls.keywords if isinstance(cls, functools.partial) else {}
    cls = cls.func if isinstance(cls, functools.partial) else cls
    options = {}
    for f in dataclasses.fields(cls):
        if f.name in _RESERVED or f.name in fixed or not f.init:
            continue
        options[f.name] = f.default if f.default is not dataclasses.MISSING else None
    return options


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Builds model ``name`` for ``num_classes`` classes; unknown names or arguments are UserErrors."""
    if name not in MODELS:
        raise UserError(
            f"Unknown model {name!r}. Valid models: {', '.join(sorted(MODELS))}."
            + did_you_mean(name, MODELS))
    options = model_options(name)
    for key in kwargs:
        if key not in options:
            raise UserError(
                f"Unknown setting model.{key} for model {name!r}." + did_you_mean(key, options)
                + f" Valid settings for {name!r}: {', '.join(sorted(options)) or 'none'}.")
    return MODELS[name](num_classes=num_classes, **kwargs)


# The compute dtype of each `precision` setting. Parameters, optimizer state and BatchNorm
# statistics stay float32 whatever it is (flax's param_dtype), so checkpoints are float32.
PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def from_config(model_config: dict, num_classes: int, precision: str = "float32") -> nn.Module:
    """The model of an experiment's ``model`` settings, for ``num_classes`` classes:
    ``{"name": "cnn", "cdims": [8]}`` builds ``create_model("cnn", num_classes, cdims=[8])``,
    computing in the dtype of ``precision``. Unknown names or settings and values the model
    refuses are UserErrors."""
    settings = dict(model_config)
    name = settings.pop("name", None)
    if not isinstance(name, str):
        raise UserError("model.name must be a string naming a model, e.g. 'lenet5' or 'cnn'.")
    model = create_model(name, num_classes, **settings)
    if precision != "float32":
        model = model.clone(dtype=PRECISIONS[precision])
    return model


def eval_logits(apply_fn, variables, images, flip: bool = False):
    """Evaluation-mode logits [B, K] of images [B, H, W, C]; with ``flip`` (test-time
    augmentation) the mean of the logits of each image and of its mirror image (W reversed),
    both in one call of the model."""
    if not flip:
        return apply_fn(variables, images, train=False).astype(jnp.float32)
    both = apply_fn(variables, jnp.concatenate([images, images[:, :, ::-1]]), train=False)
    plain, mirrored = jnp.split(both.astype(jnp.float32), 2)
    return (plain + mirrored) / 2


def layer_view(model: nn.Module) -> nn.Module:
    """``model`` as whatever looks at its layers should see it: its ``layer_view()`` where it
    computes them in another form (LeNet-5 row-major on a CPU), else ``model`` itself."""
    return model.layer_view() if hasattr(model, "layer_view") else model


def check_config(model_config: dict) -> None:
    """Checks an experiment's ``model`` settings before any data is loaded: the name, the setting
    names and the model's own value checks (its ``__post_init__``). A UserError on the first
    problem. The model is only constructed (no weights), for a placeholder class count."""
    from_config(model_config, num_classes=10)


def from_torchvision(name: str, state_dict, **model_kwargs) -> dict:
    """Flax variables ({'params', 'batch_stats'}) of model ``name`` from a torchvision state dict.

    See ``jaxcnn.models.torchvision_import`` (imported lazily: it needs neither torch nor
    torchvision, only the state dict's arrays).
    """
    from jaxcnn.models import torchvision_import

    return torchvision_import.from_torchvision(name, state_dict, **model_kwargs)
