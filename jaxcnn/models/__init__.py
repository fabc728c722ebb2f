"""Model families, chosen by name.

Every model is a ``flax.linen`` Module taking NHWC images and returning logits:
``model.apply(variables, x, train=False) -> [N, num_classes]``. To add a model, write its
Module in a file of its own in this package and add its name here.
"""

import dataclasses
import functools

import flax.linen as nn

from jaxcnn.errors import UserError, did_you_mean
from jaxcnn.models.cnn import CNN
from jaxcnn.models.lenet import LeNet5

MODELS: dict[str, type[nn.Module] | functools.partial] = {
    "lenet5": LeNet5,
    "cnn": CNN,
}

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

