"""CIFAR ResNets of depth 6n + 2 (He, Zhang, Ren & Sun 2016, section 4.2).

    x [N, 32, 32, 3]
    conv 3x3, 16 (no bias) -> BN -> ReLU                              -> 32x32x16
    stage 1: n basic blocks, 16 maps                                  -> 32x32x16
    stage 2: n basic blocks, 32 maps, the first with stride 2         -> 16x16x32
    stage 3: n basic blocks, 64 maps, the first with stride 2         -> 8x8x64
    global average pool -> fc num_classes

A basic block is 3x3 conv (stride) -> BN -> ReLU -> 3x3 conv -> BN, plus the shortcut, then ReLU.
Where a block halves the maps and doubles the channels, the shortcut is

- ``shortcut='A'`` (the paper's option A, the default): parameter-free, the input subsampled
  with stride 2 (x[:, ::2, ::2]) and zero channels appended for the new dimensions;
- ``shortcut='projection'`` (option B): a 1x1 convolution with stride 2 and BatchNorm.

With option A and 10 classes the count is 97,216 n - 21,926 (3x3 kernels, BN scales and biases
and the classifier): resnet20 (n=3) 269,722; resnet32 (5) 464,154; resnet44 (7) 658,586;
resnet56 (9) 853,018; resnet110 (18) 1,727,962 - the paper's 0.27M, 0.46M, 0.66M, 0.85M, 1.7M.

``resnet14`` is the small ResNet of the PyTorch tutorial in the study notes: n = 2 blocks per stage
(16-32-64 channels) with projection shortcuts, 175,258 parameters for 10 classes (172,506 for
option A plus 576 and 2,176 for the two projections).

28x28 inputs work too (28 -> 14 -> 7).

``lowering``: ``"stored"`` keeps each block's output in memory once computed (``layers.stored``),
so that XLA does not recompute the chain of residual sums inside every later reader, and where a
device's batch is at most 64 images (``STORE_INNER_MAX_BATCH``) also the stem's output and the
ReLU inside each block, so that XLA does not recompute BatchNorm and ReLU inside the transposes
that feed the weight gradients; ``"xla"`` leaves all that to XLA's fusion. The same function
and gradients; ``"auto"`` (the default) takes ``"stored"`` on a CPU, where it trains ResNet-20 1.3x
faster, and ``"xla"`` elsewhere. On a CPU the convolutions' weight gradients are summed over chunks
of 16 examples (``layers.conv_general_dilated``): XLA:CPU's kernel for them slows down on larger
batches; where each device has one core (the launcher's one device per core) the first stage's
16 -> 16 convolutions compute 17 outputs and drop one, so that XLA:CPU runs them on YNNPACK.

Initialisation: conv kernels He-normal (fan-in, He et al. 2015, as the paper), BN scale 1 and
bias 0, fc as PyTorch's Linear default.
"""

import functools
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.errors import UserError
from jaxcnn.models.layers import (STORED_LOWERINGS, AdaptiveAvgPool, Conv, ModuleDef, batch_norm,
                                  check_lowering, check_widths, flatten, he_normal_fan_in, resolve_lowering,
                                  stored, torch_default_bias, torch_default_kernel)

SHORTCUTS = ("A", "projection")
# The largest batch a device sees for which "stored" also keeps the stem's output and the ReLU
# inside each block (ResNet-20 on 2 CPU devices: 1.05-1.07x faster with them kept at 64 images
# a device, 0.92-0.98x at 512).
STORE_INNER_MAX_BATCH = 64


class CifarBlock(nn.Module):
    """Basic block with an option-A or projection shortcut where the shape changes."""

    width: int
    stride: int
    shortcut: str
    conv: ModuleDef
    norm: ModuleDef
    store: bool = False  # keep the block's output in memory (layers.stored)
    store_inner: bool = False  # and the ReLU between its two convolutions

    @nn.compact
    def __call__(self, x):
        y = self.conv(self.width, (3, 3), (self.stride, self.stride), padding=((1, 1), (1, 1)), name="conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        if self.store_inner:
            y = stored(y)
        y = self.conv(self.width, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        y = self.norm(name="bn2")(y)
        residual = x
        if residual.shape != y.shape:
            if self.shortcut == "projection":
                residual = self.conv(self.width, (1, 1), (self.stride, self.stride), name="shortcut_conv")(x)
                residual = self.norm(name="shortcut_bn")(residual)
            else:  # option A: subsample, then zero-pad the new channels
                residual = x[:, :: self.stride, :: self.stride, :]
                extra = self.width - residual.shape[-1]
                residual = jnp.pad(residual, ((0, 0), (0, 0), (0, 0), (0, extra)))
        y = nn.relu(y + residual)
        return stored(y) if self.store else y


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images. ``__call__(x, train) -> logits [N, num_classes]``."""

    blocks_per_stage: int
    num_classes: int = 10
    shortcut: str = "A"
    widths: Sequence[int] = (16, 32, 64)
    axis_name: str | None = None
    conv: ModuleDef = Conv  # nn.Conv, weight gradients in chunks on a CPU
    norm: ModuleDef = nn.BatchNorm
    lowering: str = "auto"
    dtype: Any = jnp.float32
    # On a CPU the launcher trains it on process replicas (one single-core process per core,
    # ``jaxcnn.replicas``) from this many images a core on. ResNet-20 on 2 cores, replicas against
    # two devices in one process (benchmarks/cpu_levers.py, JAXCNN_CPU_REPLICAS=2 against =1, 2
    # rounds each, 2026-12-07): at batch 1024 386 against 274 images/s, at 512 414 against 391,
    # at 256 382 against 387, at 128 417-433 against 416-439 (three runs).
    cpu_replicas_min_local_batch: ClassVar[int] = 256

    def __post_init__(self):
        check_lowering(self.lowering, STORED_LOWERINGS)
        if self.shortcut not in SHORTCUTS:
            raise UserError(f"model.shortcut must be one of {', '.join(map(repr, SHORTCUTS))}, "
                            f"got {self.shortcut!r}.")
        check_widths(self.widths, "widths", allow_empty=False)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.astype(self.dtype)
        conv = functools.partial(self.conv, use_bias=False, kernel_init=he_normal_fan_in, dtype=self.dtype)
        norm = batch_norm(self.norm, train, self.axis_name, self.dtype)
        x = conv(self.widths[0], (3, 3), padding=((1, 1), (1, 1)), name="conv1")(x)
        store = resolve_lowering(self.lowering, on_cpu="stored") == "stored"
        inner = store and x.shape[0] <= STORE_INNER_MAX_BATCH
        x = nn.relu(norm(name="bn1")(x))
        if inner:
            x = stored(x)
        for i, width in enumerate(self.widths):
            for j in range(self.blocks_per_stage):
                x = CifarBlock(width, 2 if i > 0 and j == 0 else 1, self.shortcut, conv, norm,
                               store, inner, name=f"stage{i + 1}_{j}")(x)
        x = flatten(AdaptiveAvgPool(1, name="avgpool")(x))
        x = nn.Dense(self.num_classes, kernel_init=torch_default_kernel,
                     bias_init=torch_default_bias(x.shape[-1]), dtype=self.dtype, name="fc")(x)
        return x.astype(jnp.float32)


class TutorialResNet(CifarResNet):
    """The study notes' PyTorch-tutorial ResNet: CifarResNet with projection shortcuts."""

    shortcut: str = "projection"


def cifar_resnet(depth: int):
    """The registry entry of ResNet-``depth`` (depth = 6n + 2)."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
    return functools.partial(CifarResNet, blocks_per_stage=(depth - 2) // 6)
