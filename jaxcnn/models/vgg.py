"""VGG (Simonyan & Zisserman 2015), configurations A, B, D and E as torchvision builds them.

    x [N, 224, 224, 3]
    stage s = 1..5 with widths 64, 128, 256, 512, 512:
        layers[s] x (conv 3x3, pad 1 (with bias) -> (BatchNorm) -> ReLU), then max-pool 2/2
    -> 7x7x512 -> adaptive average pool to 7x7 (identity at 224) -> flatten 25088
    fc6 4096 -> ReLU -> dropout 0.5 -> fc7 4096 -> ReLU -> dropout 0.5 -> fc8 num_classes

    vgg11 (A): layers (1, 1, 2, 2, 2)   132,863,336 parameters (1000 classes)
    vgg13 (B): layers (2, 2, 2, 2, 2)   133,047,848
    vgg16 (D): layers (2, 2, 3, 3, 3)   138,357,544
    vgg19 (E): layers (2, 2, 4, 4, 4)   143,667,240

The ``_bn`` variants add BatchNorm after every convolution (torchvision keeps the convolution
biases), i.e. 2 x (sum of the conv widths) more parameters: 132,868,840 / 133,053,736 /
138,365,992 / 143,678,248. Initialisation as torchvision: conv kernels He-normal (fan-out),
dense kernels N(0, 0.01), biases 0, BatchNorm scale 1 and bias 0.

``fc_width`` sets the width of fc6 and fc7 (4096; smaller widths suit small datasets and tests).

Small inputs (``small_input=True``): the fifth max-pool is dropped, so 28x28 images reach the
classifier as 1x1 maps (28 -> 14 -> 7 -> 3 -> 1) and 32x32 ones as 2x2; the adaptive average pool
then spreads them to 7x7, as torchvision does for any input, and the classifier keeps its 25,088
inputs. The parameter count does not change (only the first kernel's input channels follow the
images' channels). Without it, 32x32 inputs also work (5 pools: 1x1), 28x28 ones do not (0x0).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.models.layers import (AdaptiveAvgPool, Dropout, MaxPool, ModuleDef, batch_norm, check_int,
                                  check_rate, flatten, he_normal_fan_out)

WIDTHS = (64, 128, 256, 512, 512)
LAYERS = {"vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3),
          "vgg19": (2, 2, 4, 4, 4)}


class VGG(nn.Module):
    """VGG with ``layers[s]`` convolutions in stage s. ``__call__(x, train) -> logits``."""

    layers: Sequence[int]
    num_classes: int = 1000
    batch_norm: bool = False
    dropout: float = 0.5
    fc_width: int = 4096
    small_input: bool = False
    axis_name: str | None = None
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    dtype: Any = jnp.float32

    def __post_init__(self):
        check_rate(self.dropout, "dropout")
        check_int(self.fc_width, "fc_width")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = batch_norm(self.norm, train, self.axis_name, self.dtype)
        x = x.astype(self.dtype)
        for stage, (count, width) in enumerate(zip(self.layers, WIDTHS), start=1):
            for i in range(1, count + 1):
                x = self.conv(width, (3, 3), padding=((1, 1), (1, 1)), kernel_init=he_normal_fan_out,
                              dtype=self.dtype, name=f"conv{stage}_{i}")(x)
                if self.batch_norm:
                    x = norm(name=f"bn{stage}_{i}")(x)
                x = nn.relu(x)
            if not (self.small_input and stage == len(self.layers)):
                x = MaxPool(2, name=f"pool{stage}")(x)
        x = flatten(AdaptiveAvgPool(7, name="avgpool")(x))
        dense = lambda n, name: nn.Dense(n, kernel_init=nn.initializers.normal(0.01),  # noqa: E731
                                         dtype=self.dtype, name=name)
        x = nn.relu(dense(self.fc_width, "fc6")(x))
        x = Dropout(self.dropout, axis_name=self.axis_name, name="drop6")(x, deterministic=not train)
        x = nn.relu(dense(self.fc_width, "fc7")(x))
        x = Dropout(self.dropout, axis_name=self.axis_name, name="drop7")(x, deterministic=not train)
        x = dense(self.num_classes, "fc8")(x)
        return x.astype(jnp.float32)
