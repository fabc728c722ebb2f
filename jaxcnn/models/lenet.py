"""LeNet-5 in its modern form (ReLU, max-pooling, a plain softmax classifier).

LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to document recognition", 1998,
as it is taught today: the layer sizes of the paper with ReLU and max-pooling instead of scaled
tanh and trainable subsampling, and every C3 map connected to every S2 map.

    x [N, 28, 28, 1]
    conv 5x5x6, padding 2  -> [N, 28, 28, 6]  -> ReLU -> max-pool 2 -> [N, 14, 14, 6]
    conv 5x5x16, padding 0 -> [N, 10, 10, 16] -> ReLU -> max-pool 2 -> [N, 5, 5, 16]
    flatten 400 -> dense 120 -> ReLU -> dense 84 -> ReLU -> dense num_classes (logits)

61,706 parameters for 28x28x1 inputs and 10 classes. For the paper's 32x32 inputs set
``conv1_padding=0``: the shapes after the first convolution are then the same.

Two ways to compute the same function with the same parameters (``lowering``): ``"xla"``, NHWC
with ``nn.Conv``, and ``"rows"``, the batch kept row-major ([H, N, W, C]) with each convolution
one banded matrix product (``jaxcnn.models.rows``), 1.5-2x faster to train on XLA:CPU. The
default, ``"auto"``, takes ``"rows"`` on a CPU and ``"xla"`` elsewhere. Summaries and feature-map
plots look at the NHWC layers (``layer_view``).
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.models.layers import (check_int, check_lowering, check_spatial, max_pool,
                                  resolve_lowering, stored)
from jaxcnn.models.rows import RowConv

LOWERINGS = ("auto", "rows", "xla")


class LeNet5(nn.Module):
    """Modern LeNet-5. ``__call__(x [N, H, W, C], train) -> logits [N, num_classes]``."""

    num_classes: int = 10
    conv1_padding: int = 2
    conv: Callable[..., nn.Module] = nn.Conv  # the "xla" lowering's convolution
    lowering: str = "auto"
    dtype: Any = jnp.float32

    def __post_init__(self):
        check_int(self.conv1_padding, "conv1_padding", allow_zero=True)
        check_lowering(self.lowering, LOWERINGS)
        super().__post_init__()

    def layer_view(self) -> "LeNet5":
        """The same network computed layer by layer in NHWC, for whatever looks at its layers
        (``jaxcnn.summary``, the feature maps of ``jaxcnn.plot``)."""
        return self.clone(lowering="xla")

    def _check_size(self, x) -> None:
        """A UserError when the images are too small for the two 5x5 convolutions and pools."""
        n, h, w, _ = x.shape
        h, w = h + 2 * self.conv1_padding - 4, w + 2 * self.conv1_padding - 4
        check_spatial(x, h, w, "conv1")
        pooled = jax.ShapeDtypeStruct((n, h // 2, w // 2, 6), x.dtype)
        check_spatial(pooled, h // 2 - 4, w // 2 - 4, "conv2")
        maps = jax.ShapeDtypeStruct((n, h // 2 - 4, w // 2 - 4, 16), x.dtype)
        check_spatial(maps, (h // 2 - 4) // 2, (w // 2 - 4) // 2, "the second max-pool")

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no dropout or normalisation: train and eval behave the same
        x = x.astype(self.dtype)
        p = self.conv1_padding
        self._check_size(x)
        if resolve_lowering(self.lowering, on_cpu="rows") == "rows":
            x = jnp.transpose(x, (1, 0, 2, 3))  # [H, N, W, C]
            # Each convolution pools before its bias and the ReLU: the same values (a window's max
            # commutes with both), the bias, the ReLU and their gradients on a quarter of the numbers.
            # conv2's input is stored, so XLA does not redo the bias and ReLU inside its row stack.
            x = stored(nn.relu(RowConv(6, (5, 5), padding=((p, p), (p, p)), pool=2, dtype=self.dtype,
                                       name="conv1")(x)))
            x = nn.relu(RowConv(16, (5, 5), pool=2, dtype=self.dtype, name="conv2")(x))
            x = jnp.transpose(x, (1, 0, 2, 3))  # back to [N, H, W, C]
        else:
            x = self.conv(6, (5, 5), padding=((p, p), (p, p)), dtype=self.dtype, name="conv1")(x)
            x = max_pool(nn.relu(x), 2)
            x = self.conv(16, (5, 5), padding="VALID", dtype=self.dtype, name="conv2")(x)
            x = max_pool(nn.relu(x), 2)
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(120, dtype=self.dtype, name="fc1")(x))
        x = nn.relu(nn.Dense(84, dtype=self.dtype, name="fc2")(x))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
        return x.astype(jnp.float32)
