"""Small building blocks shared by the model families."""

import jax
import jax.numpy as jnp


def max_pool(x: jax.Array, size: int) -> jax.Array:
    """Non-overlapping ``size`` x ``size`` max-pooling of NHWC ``x`` (stride = size, no padding).

    Written as a reshape and a max, which equals ``nn.max_pool(x, (size, size), (size, size))``
    (rows and columns that do not fill a whole window are dropped, as with VALID padding) and
    is faster on XLA:CPU, in the forward and above all in the backward pass.
    """
    n, h, w, c = x.shape
    ho, wo = h // size, w // size
    x = x[:, : ho * size, : wo * size, :]
    return jnp.max(x.reshape(n, ho, size, wo, size, c), axis=(2, 4))
