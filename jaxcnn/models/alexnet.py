"""AlexNet: torchvision's single-tower variant and the paper's two-tower network.

``alexnet`` (``AlexNet``) is torchvision's ``alexnet`` layer for layer (the "one weird trick"
variant of Krizhevsky 2014: 64-192-384-256-256 channels, no LRN, no groups):

    x [N, 224, 224, 3]
    conv1 11x11/4, pad 2, 64   -> 55x55x64   -> ReLU -> max-pool 3/2 -> 27x27x64
    conv2 5x5, pad 2, 192      -> 27x27x192  -> ReLU -> max-pool 3/2 -> 13x13x192
    conv3 3x3, pad 1, 384; conv4 3x3, pad 1, 256; conv5 3x3, pad 1, 256 (each + ReLU)
                               -> 13x13x256  -> max-pool 3/2 -> 6x6x256
    adaptive average pool to 6x6 (identity at 224) -> flatten 9216
    dropout 0.5 -> fc6 4096 -> ReLU -> dropout 0.5 -> fc7 4096 -> ReLU -> fc8 num_classes

61,100,840 parameters for 1000 classes, torchvision's count. Initialisation: PyTorch's defaults
(uniform, bound 1/sqrt(fan_in), weights and biases), as torchvision leaves them.

``alexnet_original`` (``AlexNetOriginal``) is Krizhevsky, Sutskever & Hinton 2012 with the two
GPUs' towers expressed as grouped convolutions: conv2, conv4 and conv5 have 2 groups (each half
of the output maps sees only its own tower's half of the input maps), conv3 and the dense layers
connect across the towers:

    conv1 11x11/4, pad 2, 96 -> ReLU -> LRN -> max-pool 3/2           55 -> 27
    conv2 5x5, pad 2, 256, 2 groups -> ReLU -> LRN -> max-pool 3/2    27 -> 13
    conv3 3x3, pad 1, 384 -> ReLU; conv4 3x3, pad 1, 384, 2 groups -> ReLU
    conv5 3x3, pad 1, 256, 2 groups -> ReLU -> max-pool 3/2           13 -> 6
    fc6 4096 -> ReLU -> dropout 0.5 -> fc7 4096 -> ReLU -> dropout 0.5 -> fc8 num_classes

LRN: k=2, n=5, alpha=1e-4, beta=0.75 (``layers.LocalResponseNorm``). Parameters, by the paper's
arithmetic: 34,944 + 307,456 + 885,120 + 663,936 + 442,624 + 37,752,832 + 16,781,312 +
4,097,000 = 60,965,224 for 1000 classes. Initialisation as in the paper: weights N(0, 0.01);
biases 1 in conv2, conv4, conv5, fc6 and fc7 and 0 elsewhere. The paper's 224x224 input does
not give its 55x55 maps without padding (227 would); a 2-pixel padding of conv1 does, as in
torchvision. An adaptive average pool to 6x6 (the identity at 224) lets other sizes through.

Both variants: ``fc_width`` sets the width of fc6 and fc7 (4096).

Small inputs (``small_input=True``, for 28x28 and 32x32 images), both variants: conv1 becomes a
3x3 convolution with stride 1 and padding 1 (same channels); everything else stays, including the
adaptive pooling to 6x6, so only conv1's parameter count changes. 32x32: conv1 32 -> pool 15 ->
conv2 15 -> pool 7 -> conv3-5 7 -> pool 3 -> adaptive 6x6; 28x28: 28 -> 13 -> 13 -> 6 -> 6 -> 2 -> 6x6.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.models.layers import (AdaptiveAvgPool, Dropout, GroupedConv, LocalResponseNorm, MaxPool,
                                  ModuleDef, check_int, check_rate, flatten, torch_default_bias,
                                  torch_default_kernel)


def _conv1(small_input: bool):
    """(kernel, stride, padding) of conv1: ImageNet's 11x11/4 or the small-input 3x3/1."""
    return (3, 1, 1) if small_input else (11, 4, 2)


def _check_arguments(model) -> None:
    """The value checks that both variants share."""
    check_rate(model.dropout, "dropout")
    check_int(model.fc_width, "fc_width")


class AlexNet(nn.Module):
    """torchvision's AlexNet. ``__call__(x [N, H, W, C], train) -> logits [N, num_classes]``."""

    num_classes: int = 1000
    dropout: float = 0.5
    fc_width: int = 4096
    small_input: bool = False
    conv: ModuleDef = nn.Conv
    dtype: Any = jnp.float32
    axis_name: str | None = None  # dropout draws the global batch's masks over this axis

    def __post_init__(self):
        _check_arguments(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(self.dtype)

        def conv(features, kernel, stride, padding, name):
            fan_in = kernel * kernel * x.shape[-1]
            return self.conv(features, (kernel, kernel), (stride, stride),
                             padding=((padding, padding), (padding, padding)),
                             kernel_init=torch_default_kernel, bias_init=torch_default_bias(fan_in),
                             dtype=self.dtype, name=name)

        def dense(features, name):
            return nn.Dense(features, kernel_init=torch_default_kernel,
                            bias_init=torch_default_bias(x.shape[-1]), dtype=self.dtype, name=name)

        k, s, p = _conv1(self.small_input)
        x = nn.relu(conv(64, k, s, p, "conv1")(x))
        x = MaxPool(3, 2, name="pool1")(x)
        x = nn.relu(conv(192, 5, 1, 2, "conv2")(x))
        x = MaxPool(3, 2, name="pool2")(x)
        x = nn.relu(conv(384, 3, 1, 1, "conv3")(x))
        x = nn.relu(conv(256, 3, 1, 1, "conv4")(x))
        x = nn.relu(conv(256, 3, 1, 1, "conv5")(x))
        x = MaxPool(3, 2, name="pool5")(x)
        x = flatten(AdaptiveAvgPool(6, name="avgpool")(x))
        x = Dropout(self.dropout, axis_name=self.axis_name, name="drop6")(x, deterministic=not train)
        x = nn.relu(dense(self.fc_width, "fc6")(x))
        x = Dropout(self.dropout, axis_name=self.axis_name, name="drop7")(x, deterministic=not train)
        x = nn.relu(dense(self.fc_width, "fc7")(x))
        x = dense(self.num_classes, "fc8")(x)
        return x.astype(jnp.float32)


class AlexNetOriginal(nn.Module):
    """The 2012 paper's AlexNet (towers as 2 groups, LRN). ``__call__(x, train) -> logits``."""

    num_classes: int = 1000
    dropout: float = 0.5
    fc_width: int = 4096
    small_input: bool = False
    conv: ModuleDef = nn.Conv
    dtype: Any = jnp.float32
    axis_name: str | None = None  # dropout draws the global batch's masks over this axis

    def __post_init__(self):
        _check_arguments(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(self.dtype)
        weights = nn.initializers.normal(0.01)

        def conv(features, kernel, padding, name, stride=1, groups=1, bias=0.0):
            pads = ((padding, padding), (padding, padding))
            if groups > 1:  # the two towers (same parameters as feature_group_count=2)
                return GroupedConv(features, (kernel, kernel), (stride, stride), pads, groups,
                                   kernel_init=weights, bias_init=nn.initializers.constant(bias),
                                   dtype=self.dtype, name=name)
            return self.conv(features, (kernel, kernel), (stride, stride), padding=pads,
                             kernel_init=weights, bias_init=nn.initializers.constant(bias),
                             dtype=self.dtype, name=name)

        def dense(features, name, bias=0.0):
            return nn.Dense(features, kernel_init=weights, bias_init=nn.initializers.constant(bias),
                            dtype=self.dtype, name=name)

        k, s, p = _conv1(self.small_input)
        x = nn.relu(conv(96, k, p, "conv1", stride=s)(x))
        x = MaxPool(3, 2, name="pool1")(LocalResponseNorm(name="lrn1")(x))
        x = nn.relu(conv(256, 5, 2, "conv2", groups=2, bias=1.0)(x))
        x = MaxPool(3, 2, name="pool2")(LocalResponseNorm(name="lrn2")(x))
        x = nn.relu(conv(384, 3, 1, "conv3")(x))
        x = nn.relu(conv(384, 3, 1, "conv4", groups=2, bias=1.0)(x))
        x = nn.relu(conv(256, 3, 1, "conv5", groups=2, bias=1.0)(x))
        x = MaxPool(3, 2, name="pool5")(x)
        x = flatten(AdaptiveAvgPool(6, name="avgpool")(x))
        x = nn.relu(dense(self.fc_width, "fc6", bias=1.0)(x))
        x = Dropout(self.dropout, axis_name=self.axis_name, name="drop6")(x, deterministic=not train)
        x = nn.relu(dense(self.fc_width, "fc7", bias=1.0)(x))
        x = Dropout(self.dropout, axis_name=self.axis_name, name="drop7")(x, deterministic=not train)
        x = dense(self.num_classes, "fc8")(x)
        return x.astype(jnp.float32)
