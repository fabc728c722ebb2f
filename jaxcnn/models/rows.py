"""Convolutions as banded matrix products over image rows: how LeNet-5 trains fast on a CPU.

A batch kept row-major, ``[H, N, W, C]`` (row 0 of every image, then row 1, ...), turns a
stride-1 convolution with a ``KH x KW`` kernel into one matrix product. Output row ``y`` of all
images is

    out[y] = [x[y], x[y + 1], ..., x[y + KH - 1]] @ T      [N, KH*W*C] @ [KH*W*C, OW*O]

where ``T`` stacks, for each kernel row ``i``, the banded (Toeplitz) matrix that slides kernel
row ``i`` along the width: ``T[(i, p, c), (x, o)] = kernel[i, p - x, c, o]`` for
``0 <= p - x < KW``, else 0. Most of ``T`` is zeros, so the product does more multiply-adds than
the convolution (LeNet-5: 2-3x), but XLA:CPU runs the gradients of convolutions with few
channels at 10-40 GFLOP/s, against 150-190 GFLOP/s for matrix products of these shapes on the
same cores; the gradients of a matrix product are matrix products too
(``dT = rows^T @ dout``, ``drows = dout @ T^T``). The element-wise work around the convolution
(bias, ReLU, pooling and their gradients) also gets rows of ``W*C`` numbers instead of ``C``.
LeNet-5's training step: 1.5x at batch 128, 2x at 1024 (``benchmarks/step_variants.py``).

``block`` cuts the width into blocks of ``block`` output columns, each a product with the
``block + KW - 1`` input columns it sees: fewer zeros in ``T``, more (and narrower) rows.
``default_block`` keeps whole rows for multi-channel inputs and blocks of at most 14 columns
for one-channel ones (LeNet-5's first layer: 14, two blocks a row), as measured best for
LeNet-5: on one core (its process replicas) 14 columns trained 1.03-1.11x faster than 7 and 28
columns 0.87-0.95x; on one process with two threads 14 and 7 were level.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.models.layers import max_pool_rows


def default_block(out_width: int, channels: int) -> int:
    """The output columns per product for an ``out_width``-wide output of ``channels`` inputs."""
    if channels > 1:
        return out_width
    return max(b for b in range(1, min(out_width, 14) + 1) if out_width % b == 0)


def band_matrix(kernel: jax.Array, in_width: int) -> jax.Array:
    """``kernel`` [KH, KW, C, O] -> T [KH*in_width*C, OW*O], OW = in_width - KW + 1."""
    kh, kw, c, o = kernel.shape
    ow = in_width - kw + 1
    shifts = np.zeros((kw, in_width, ow), np.float32)  # shifts[j, p, x] = 1 where p = x + j
    for j in range(kw):
        shifts[j, np.arange(ow) + j, np.arange(ow)] = 1
    t = jnp.einsum("ijco,jpx->ipcxo", kernel, jnp.asarray(shifts, kernel.dtype))
    return t.reshape(kh * in_width * c, ow * o)


def conv_rows(x: jax.Array, kernel: jax.Array, padding=((0, 0), (0, 0)),
              block: int | None = None) -> jax.Array:
    """Stride-1 convolution (cross-correlation, as ``lax.conv_general_dilated``) of a row-major
    batch: ``x`` [H, N, W, C], ``kernel`` [KH, KW, C, O] (HWIO), ``padding`` ((top, bottom),
    (left, right)) of zeros -> [OH, N, OW, O]. ``block``: output columns per product (None:
    ``default_block``)."""
    kh, kw, c, o = kernel.shape
    (top, bottom), (left, right) = padding
    x = jnp.pad(x, ((top, bottom), (0, 0), (left, right), (0, 0)))
    h, n, w, _ = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    block = default_block(ow, c) if block is None else block
    if ow % block:
        raise ValueError(f"block {block} does not divide the output width {ow}")
    span = block + kw - 1
    # rows[y, n, b, i, p, c] = x[y + i, n, b * block + p, c]
    rows = jnp.stack([jnp.stack([x[i:i + oh, :, b * block:b * block + span] for i in range(kh)], axis=2)
                      for b in range(ow // block)], axis=2)
    out = rows.reshape(-1, kh * span * c) @ band_matrix(kernel, span)
    return out.reshape(oh, n, ow, o)


class RowConv(nn.Module):
    """``nn.Conv`` (stride 1, explicit padding; the same ``kernel`` [KH, KW, C, O] and ``bias``
    parameters and initialisation) for a row-major batch [H, N, W, C], computed by ``conv_rows``.

    ``pool`` > 1: the output max-pooled in ``pool`` x ``pool`` windows (``max_pool_rows``), the
    bias added after the pooling instead of before: the same values (a window's max moves with a
    constant added to it), with the bias, and what follows it, on a quarter of the numbers."""

    features: int
    kernel_size: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    block: int | None = None  # output columns per product; None: default_block
    pool: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (*self.kernel_size, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        y = conv_rows(x.astype(self.dtype), kernel.astype(self.dtype), self.padding, self.block)
        if self.pool > 1:
            y = max_pool_rows(y, self.pool)
        return y + bias.astype(self.dtype)
