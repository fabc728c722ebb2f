"""GoogLeNet (Inception v1; Szegedy et al. 2015) as torchvision builds it, with both auxiliary
classifiers.

    x [N, 224, 224, 3]
    conv1 7x7/2, pad 3, 64 -> max-pool 3/2 (ceil)       -> 56x56x64
    conv2 1x1, 64 -> conv3 3x3, pad 1, 192 -> max-pool 3/2 (ceil)   -> 28x28x192
    inception 3a, 3b -> max-pool 3/2 (ceil)                          -> 14x14x480
    inception 4a [aux1], 4b, 4c, 4d [aux2], 4e -> max-pool 2/2 (ceil) -> 7x7x832
    inception 5a, 5b -> global average pool -> dropout -> fc num_classes

Every convolution is "BasicConv": conv (no bias) -> BatchNorm (epsilon 1e-3) -> ReLU. An
inception block concatenates four branches: 1x1; 1x1 reduce -> 3x3; 1x1 reduce -> "5x5"; 3x3
max-pool (stride 1, pad 1) -> 1x1 projection. An auxiliary classifier: adaptive average pool to
4x4 -> BasicConv 1x1, 128 -> flatten 2048 -> fc 1024 -> ReLU -> dropout 0.7 -> fc num_classes.

Train/eval: with ``aux_logits=True`` (default), ``__call__(x, train=True)`` returns
``(logits, [aux1_logits, aux2_logits])`` and the trainer adds each auxiliary loss with weight
``aux_loss_weight`` (0.3, the paper's); ``train=False`` returns the main head's logits only and
skips the auxiliary heads. Parameters (1000 classes): 13,004,888 with the auxiliary heads and
6,624,904 without (``aux_logits=False``), torchvision's counts.

Differences between torchvision (followed here, for weight compatibility) and the paper:

- the "5x5" branch uses a 3x3 kernel: torchvision's ImageNet weights were ported from a
  TensorFlow model that has 3x3 there, and its structure keeps it for them (pytorch/vision issue
  #906). ``branch3_kernel=5`` gives the paper's 5x5 (more parameters: 13,385,816 / 7,005,832 for
  1000 classes, with / without the auxiliary heads);
- BatchNorm after every convolution and no local response normalisation (the paper predates BN
  and has LRN after the first pool and after conv3);
- the auxiliary heads pool adaptively to 4x4 (the paper: 5x5 average pool with stride 3, which
  also gives 4x4 at 14x14 but with other windows), and the main dropout is 0.2 (the paper: 0.4;
  ``dropout=0.4``);
- max-pools round up (ceil mode), as Caffe did.

``transform_input=True`` maps ImageNet-normalised inputs to the (x - 0.5) / 0.5 normalisation
that torchvision's ported weights expect, as torchvision's pretrained GoogLeNet does.

Initialisation as torchvision: convolution and dense weights N(0, 0.01) (truncated at +-2, which
an N(0, 0.01) never reaches), biases 0, BN scale 1 and bias 0.

Small inputs (``small_input=True``, 28x28 and 32x32): conv1 becomes 3x3 with stride 1 (padding 1)
and the first max-pool is dropped, so inception 3 sees 16x16 (28: 14x14), inception 4 and the
auxiliary heads 8x8 (28: 7x7) and inception 5 4x4. Only conv1's parameters change.
"""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.models.layers import (AdaptiveAvgPool, Dropout, MaxPool, ModuleDef, batch_norm, check_rate,
                                  flatten)

normal_001 = nn.initializers.normal(0.01)

# (1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool projection) of each inception block.
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


class BasicConv(nn.Module):
    """conv (no bias) -> BatchNorm (epsilon 1e-3, as torchvision's GoogLeNet) -> ReLU."""

    features: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm

    @nn.compact
    def __call__(self, x):
        p = self.padding
        x = self.conv(self.features, (self.kernel, self.kernel), (self.stride, self.stride),
                      padding=((p, p), (p, p)), name="conv")(x)
        return nn.relu(self.norm(name="bn")(x))


class Inception(nn.Module):
    """Four parallel branches, concatenated along the channels."""

    widths: tuple
    branch3_kernel: int
    conv: ModuleDef
    norm: ModuleDef

    @nn.compact
    def __call__(self, x):
        c1, c3r, c3, c5r, c5, cp = self.widths
        basic = functools.partial(BasicConv, conv=self.conv, norm=self.norm)
        k = self.branch3_kernel
        b1 = basic(c1, name="branch1")(x)
        b2 = basic(c3, 3, padding=1, name="branch2")(basic(c3r, name="branch2_reduce")(x))
        b3 = basic(c5, k, padding=k // 2, name="branch3")(basic(c5r, name="branch3_reduce")(x))
        b4 = basic(cp, name="branch4")(MaxPool(3, 1, padding=1, ceil_mode=True, name="branch4_pool")(x))
        return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: adaptive 4x4 average pool, 1x1 conv 128, fc 1024, dropout, fc."""

    num_classes: int
    dropout: float
    conv: ModuleDef
    norm: ModuleDef
    dtype: Any = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool):
        x = AdaptiveAvgPool(4, name="avgpool")(x)
        x = flatten(BasicConv(128, conv=self.conv, norm=self.norm, name="conv")(x))
        x = nn.relu(nn.Dense(1024, kernel_init=normal_001, dtype=self.dtype, name="fc1")(x))
        x = Dropout(self.dropout, axis_name=self.axis_name, name="dropout")(x, deterministic=not train)
        return nn.Dense(self.num_classes, kernel_init=normal_001, dtype=self.dtype, name="fc2")(x)


class GoogLeNet(nn.Module):
    """Inception v1. ``__call__(x, train)``: logits, or (logits, [aux1, aux2]) when training."""

    num_classes: int = 1000
    aux_logits: bool = True
    dropout: float = 0.2
    dropout_aux: float = 0.7
    branch3_kernel: int = 3
    small_input: bool = False
    transform_input: bool = False
    axis_name: str | None = None
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.branch3_kernel not in (3, 5):
            raise UserError("model.branch3_kernel must be 3 (torchvision) or 5 (the paper), "
                            f"got {self.branch3_kernel!r}.")
        check_rate(self.dropout, "dropout")
        check_rate(self.dropout_aux, "dropout_aux")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(self.dtype)
        if self.transform_input:
            # torchvision's pretrained GoogLeNet expects ImageNet-normalised inputs and maps them
            # to the (x - 0.5) / 0.5 normalisation its ported weights were trained with.
            std, mean = jnp.array([0.229, 0.224, 0.225]), jnp.array([0.485, 0.456, 0.406])
            x = x * (std / 0.5).astype(self.dtype) + ((mean - 0.5) / 0.5).astype(self.dtype)
        conv = functools.partial(self.conv, use_bias=False, kernel_init=normal_001, dtype=self.dtype)
        norm = batch_norm(self.norm, train, self.axis_name, self.dtype, epsilon=1e-3)
        basic = functools.partial(BasicConv, conv=conv, norm=norm)
        inception = lambda name: Inception(INCEPTION[name], self.branch3_kernel, conv, norm,  # noqa: E731
                                           name=f"inception{name}")
        aux = lambda name: InceptionAux(self.num_classes, self.dropout_aux, conv, norm,  # noqa: E731
                                        self.dtype, self.axis_name, name=name)
        # The auxiliary heads run when training, and when initialising so that their
        # parameters exist even if init is called with train=False.
        run_aux = self.aux_logits and (train or self.is_initializing())

        if self.small_input:
            x = basic(64, 3, padding=1, name="conv1")(x)
        else:
            x = basic(64, 7, 2, 3, name="conv1")(x)
            x = MaxPool(3, 2, ceil_mode=True, name="maxpool1")(x)
        x = basic(64, name="conv2")(x)
        x = basic(192, 3, padding=1, name="conv3")(x)
        x = MaxPool(3, 2, ceil_mode=True, name="maxpool2")(x)
        x = inception("3a")(x)
        x = inception("3b")(x)
        x = MaxPool(3, 2, ceil_mode=True, name="maxpool3")(x)
        x = inception("4a")(x)
        aux1 = aux("aux1")(x, train) if run_aux else None
        x = inception("4b")(x)
        x = inception("4c")(x)
        x = inception("4d")(x)
        aux2 = aux("aux2")(x, train) if run_aux else None
        x = inception("4e")(x)
        x = MaxPool(2, 2, ceil_mode=True, name="maxpool4")(x)
        x = inception("5a")(x)
        x = inception("5b")(x)
        x = flatten(AdaptiveAvgPool(1, name="avgpool")(x))
        x = Dropout(self.dropout, axis_name=self.axis_name, name="dropout")(x, deterministic=not train)
        x = nn.Dense(self.num_classes, kernel_init=normal_001, dtype=self.dtype, name="fc")(x)
        logits = x.astype(jnp.float32)
        if self.aux_logits and train:
            return logits, [aux1.astype(jnp.float32), aux2.astype(jnp.float32)]
        return logits
