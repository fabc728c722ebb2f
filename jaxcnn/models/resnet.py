"""ImageNet ResNets (He, Zhang, Ren & Sun 2016) as torchvision builds them ("ResNet v1.5").

    x [N, 224, 224, 3]
    conv1 7x7/2, pad 3, 64 (no bias) -> BN -> ReLU -> max-pool 3/2, pad 1    -> 56x56x64
    layer1..layer4: stage_sizes[s] blocks of width 64, 128, 256, 512; the first block of
        layers 2-4 has stride 2                                            -> 7x7x(512 x expansion)
    global average pool -> fc num_classes (with bias)

    BasicBlock (expansion 1):  3x3 (stride) -> BN -> ReLU -> 3x3 -> BN, + shortcut, ReLU
    Bottleneck (expansion 4):  1x1 -> BN -> ReLU -> 3x3 (stride) -> BN -> ReLU -> 1x1 (4 x width)
                               -> BN, + shortcut, ReLU
    shortcut: the identity, or a 1x1 convolution (stride) + BN where the shape changes.

The bottleneck's stride sits on its 3x3 convolution, as in torchvision and Caffe2's ResNet v1.5
(the paper and the original Caffe models put it on the first 1x1). Parameter counts (1000
classes): resnet18 11,689,512; resnet34 21,797,672; resnet50 25,557,032; resnet101 44,549,160;
resnet152 60,192,808, torchvision's counts. Initialisation as torchvision: conv kernels He-normal
(fan-out), BatchNorm scale 1 and bias 0 (``zero_init_residual`` zeroes each block's last BN
scale), fc as PyTorch's Linear default.

Small inputs (``small_input=True``, for 28x28 and 32x32 images): the stem becomes a 3x3 stride-1
convolution (64 maps, padding 1) without the max-pool, the usual CIFAR adaptation, so the four
stages see 32, 16, 8 and 4 pixels (28: 28, 14, 7, 4). Only conv1's parameters change (3x3 instead
of 7x7). Without it, small images also run, but the stages see only 8x8 down to 1x1.

``lowering``: ``"stored"`` keeps each block's output in memory once computed (``layers.stored``),
so that XLA does not recompute the chain of residual sums inside every later reader; ``"xla"``
leaves that to XLA's fusion. The same function and gradients; ``"auto"`` (the default) takes
``"stored"`` on a CPU and ``"xla"`` elsewhere.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.models.layers import (STORED_LOWERINGS, AdaptiveAvgPool, MaxPool, ModuleDef, batch_norm,
                                  check_int, check_lowering, flatten, he_normal_fan_out, resolve_lowering,
                                  stored, torch_default_bias, torch_default_kernel)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (ResNet-18/34)."""

    width: int
    stride: int = 1
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    zero_init_residual: bool = False
    expansion = 1

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.width, (3, 3), (self.stride, self.stride), padding=((1, 1), (1, 1)), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv(self.width, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = self.norm(name="bn2", scale_init=nn.initializers.zeros if self.zero_init_residual
                      else nn.initializers.ones)(y)
        if residual.shape != y.shape:
            residual = self.conv(self.width, (1, 1), (self.stride, self.stride), name="downsample_conv")(residual)
            residual = self.norm(name="downsample_bn")(residual)
        return nn.relu(y + residual)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand to 4 x width (ResNet-50/101/152)."""

    width: int
    stride: int = 1
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    zero_init_residual: bool = False
    expansion = 4

    @nn.compact
    def __call__(self, x):
        residual = x
        y = nn.relu(self.norm(name="bn1")(self.conv(self.width, (1, 1), name="conv1")(x)))
        y = self.conv(self.width, (3, 3), (self.stride, self.stride), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = nn.relu(self.norm(name="bn2")(y))
        y = self.conv(self.width * 4, (1, 1), name="conv3")(y)
        y = self.norm(name="bn3", scale_init=nn.initializers.zeros if self.zero_init_residual
                      else nn.initializers.ones)(y)
        if residual.shape != y.shape:
            residual = self.conv(self.width * 4, (1, 1), (self.stride, self.stride), name="downsample_conv")(residual)
            residual = self.norm(name="downsample_bn")(residual)
        return nn.relu(y + residual)


class ResNet(nn.Module):
    """ImageNet ResNet. ``__call__(x [N, H, W, C], train) -> logits [N, num_classes]``."""

    stage_sizes: Sequence[int]
    block: ModuleDef
    num_classes: int = 1000
    num_filters: int = 64
    small_input: bool = False
    zero_init_residual: bool = False
    axis_name: str | None = None
    conv: ModuleDef = nn.Conv
    norm: ModuleDef = nn.BatchNorm
    lowering: str = "auto"
    dtype: Any = jnp.float32

    def __post_init__(self):
        check_int(self.num_filters, "num_filters")
        check_lowering(self.lowering, STORED_LOWERINGS)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(self.dtype)
        conv = functools.partial(self.conv, use_bias=False, kernel_init=he_normal_fan_out, dtype=self.dtype)
        norm = batch_norm(self.norm, train, self.axis_name, self.dtype)
        if self.small_input:
            x = conv(self.num_filters, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(x)
            x = nn.relu(norm(name="bn1")(x))
        else:
            x = conv(self.num_filters, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="conv1")(x)
            x = nn.relu(norm(name="bn1")(x))
            x = MaxPool(3, 2, padding=1, name="maxpool")(x)
        store = resolve_lowering(self.lowering, on_cpu="stored") == "stored"
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                x = self.block(self.num_filters * 2 ** i, stride=2 if i > 0 and j == 0 else 1,
                               conv=conv, norm=norm, zero_init_residual=self.zero_init_residual,
                               name=f"layer{i + 1}_{j}")(x)
                if store:
                    x = stored(x)
        x = flatten(AdaptiveAvgPool(1, name="avgpool")(x))  # global average pooling
        x = nn.Dense(self.num_classes, kernel_init=torch_default_kernel,
                     bias_init=torch_default_bias(x.shape[-1]), dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.float32)


STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
               152: (3, 8, 36, 3)}

ResNet18 = functools.partial(ResNet, stage_sizes=STAGE_SIZES[18], block=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=STAGE_SIZES[34], block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=STAGE_SIZES[50], block=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=STAGE_SIZES[101], block=Bottleneck)
ResNet152 = functools.partial(ResNet, stage_sizes=STAGE_SIZES[152], block=Bottleneck)
