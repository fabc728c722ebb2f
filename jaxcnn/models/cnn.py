"""The configurable CNN of the study notes: [conv -> (BatchNorm) -> ReLU -> max-pool -> dropout] * len(cdims),
then [dense -> ReLU] * len(hdims), then a dense classifier.

    x [N, H, W, C]
    for each c in cdims: conv k x k x c, 'same' padding -> [N, H, W, c]  (BatchNorm) -> ReLU
                         max-pool 2 -> [N, H/2, W/2, c] -> spatial dropout p (whole channels)
    flatten -> for each h in hdims: dense h -> ReLU -> dense num_classes (logits)

Weights are Kaiming-normal (He et al. 2015: fan-in, gain sqrt(2), untruncated normal, as
PyTorch's ``kaiming_normal_``), biases zero. With cdims=(32, 64), hdims=(32,), ksize=3 on
28x28x1 inputs and 10 classes it has 119,530 parameters (plus 192 BatchNorm scales and biases
with ``batch_norm=True``).

BatchNorm and dropout follow ``train``: batch statistics and dropout when training, running
statistics and no dropout when evaluating. ``axis_name`` makes BatchNorm average its batch
statistics over that named device axis (the global batch) and dropout draw the global batch's
masks, so the math does not depend on the device count; leave it None outside a
``shard_map``/``pmap``.

On a CPU the convolutions' weight gradients are summed over chunks of 16 examples
(``layers.conv_general_dilated``): XLA:CPU's kernel for them slows down on larger batches.

``lowering``: ``"stored"`` keeps each block's output (what the next convolution, or the first dense
layer, reads) in memory once computed (``layers.stored``), so that XLA does not recompute BatchNorm,
ReLU, the pooling and the dropout inside the transpose that feeds that convolution's weight
gradient; ``"xla"`` leaves that to XLA's fusion. The same function and gradients; ``"auto"`` (the
default) takes ``"stored"`` on a CPU, where it trains the CNN with BatchNorm 1.1x faster, and
``"xla"`` elsewhere.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn.models.layers import (STORED_LOWERINGS, Conv, Dropout, batch_norm, check_int, check_lowering,
                                  check_rate, check_widths, he_normal_fan_in, max_pool, resolve_lowering,
                                  stored)


class CNN(nn.Module):
    """Configurable CNN. ``__call__(x [N, H, W, C], train) -> logits [N, num_classes]``."""

    num_classes: int = 10
    cdims: Sequence[int] = (32, 64)
    hdims: Sequence[int] = (32,)
    ksize: int = 3
    batch_norm: bool = False
    dropout: float = 0.5
    axis_name: str | None = None
    conv: Callable[..., nn.Module] = Conv  # nn.Conv, weight gradients in chunks on a CPU
    norm: Callable[..., nn.Module] = nn.BatchNorm
    lowering: str = "auto"
    dtype: Any = jnp.float32

    def __post_init__(self):
        check_widths(self.cdims, "cdims")
        check_widths(self.hdims, "hdims")
        check_int(self.ksize, "ksize")
        check_rate(self.dropout, "dropout")
        check_lowering(self.lowering, STORED_LOWERINGS)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = lambda c, name: self.conv(  # noqa: E731
            c, (self.ksize, self.ksize), padding="SAME", kernel_init=he_normal_fan_in,
            dtype=self.dtype, name=name)
        norm = batch_norm(self.norm, train, self.axis_name, self.dtype)
        x = x.astype(self.dtype)
        store = resolve_lowering(self.lowering, on_cpu="stored") == "stored"
        for i, c in enumerate(self.cdims):
            x = conv(c, f"conv{i + 1}")(x)
            if self.batch_norm:
                x = norm(name=f"bn{i + 1}")(x)
            x = max_pool(nn.relu(x), 2)
            # Spatial dropout (PyTorch's Dropout2d): one draw per example and channel.
            x = Dropout(self.dropout, broadcast_dims=(1, 2), axis_name=self.axis_name)(
                x, deterministic=not train)
            if store:
                x = stored(x)
        x = x.reshape((x.shape[0], -1))
        for i, h in enumerate(self.hdims):
            x = nn.relu(nn.Dense(h, kernel_init=he_normal_fan_in, dtype=self.dtype, name=f"fc{i + 1}")(x))
        x = nn.Dense(self.num_classes, kernel_init=he_normal_fan_in, dtype=self.dtype, name="classifier")(x)
        return x.astype(jnp.float32)
