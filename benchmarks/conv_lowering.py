"""One convolution, three ways, timed alone on XLA:CPU: the microbenchmark behind the README's
"convolutions lowered by hand" lever.

    python benchmarks/conv_lowering.py

For each layer shape (batch 128, stride 1, NHWC / HWIO) it times the forward pass, the weight
gradient and the input gradient, each jitted on its own:

- ``xla``: ``lax.conv_general_dilated`` and its derived gradients (what ``nn.Conv`` runs);
- ``taps``: a sum over the K x K kernel taps of shifted-input x tap-matrix products;
- ``im2col``: the K x K shifted inputs side by side, then one matrix product (for the input
  gradient: one product ``dy @ W^T``, then the K x K pieces added back at their shifts, col2im).

It prints milliseconds (median of 30), GFLOP/s and the largest difference from ``xla``. These
numbers are for the operations alone: inside a training step XLA fuses the cheap sums of
``taps`` / col2im into their consumers and recomputes them, and they lose (see the README).
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

LAYOUT = ("NHWC", "HWIO", "NHWC")
# (batch, size, in channels, out channels, kernel, padding): LeNet-5's and the CNN's convolutions.
SHAPES = [(128, 28, 1, 6, 5, 2), (128, 14, 6, 16, 5, 0), (128, 28, 1, 32, 3, 1), (128, 14, 32, 64, 3, 1)]


def xla(x, w, pad):
    return lax.conv_general_dilated(x, w, (1, 1), ((pad, pad), (pad, pad)), dimension_numbers=LAYOUT)


def shifted(x, k, pad):
    """The K*K shifted views of the padded input, each [N, OH, OW, C]."""
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    oh, ow = x.shape[1] - k + 1, x.shape[2] - k + 1
    return [x[:, i:i + oh, j:j + ow, :] for i in range(k) for j in range(k)]


def taps(x, w, pad):
    k = w.shape[0]
    return sum(jnp.einsum("nhwc,co->nhwo", p, w[t // k, t % k]) for t, p in enumerate(shifted(x, k, pad)))


def im2col(x, w, pad):
    columns = jnp.concatenate(shifted(x, w.shape[0], pad), axis=-1)
    return columns @ w.reshape(-1, w.shape[-1])


def weight_gradient(conv):
    def f(x, w, dy, pad):
        return jax.vjp(lambda w: conv(x, w, pad), w)[1](dy)[0]
    return f


def input_gradient_col2im(x, w, dy, pad):
    k, _, cin, cout = w.shape
    n, oh, ow, _ = dy.shape
    pieces = (dy.reshape(-1, cout) @ w.reshape(-1, cout).T).reshape(n, oh, ow, k, k, cin)
    hp, wp = x.shape[1] + 2 * pad, x.shape[2] + 2 * pad
    dx = sum(jnp.pad(pieces[:, :, :, i, j, :], ((0, 0), (i, hp - oh - i), (j, wp - ow - j), (0, 0)))
             for i in range(k) for j in range(k))
    return dx[:, pad:hp - pad, pad:wp - pad, :]


def input_gradient(conv):
    def f(x, w, dy, pad):
        return jax.vjp(lambda x: conv(x, w, pad), x)[1](dy)[0]
    return f


def milliseconds(f, args, reps=30):
    f = jax.jit(f, static_argnums=len(args) - 1)
    out = jax.block_until_ready(f(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times)), out


def main():
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}; ms (median of 30), GFLOP/s, max |diff| from xla")
    for n, size, cin, cout, k, pad in SHAPES:
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(n, size, size, cin)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
        out = size + 2 * pad - k + 1
        dy = jnp.asarray(rng.normal(size=(n, out, out, cout)), jnp.float32)
        gflop = 2 * n * out * out * k * k * cin * cout / 1e9
        print(f"\nbatch {n}, {size}x{size}x{cin} -> {cout}, {k}x{k}, padding {pad}: {gflop:.3f} GFLOP per pass")
        cases = [("forward", [("xla", xla), ("taps", taps), ("im2col", im2col)], (x, w, pad)),
                 ("weight gradient", [("xla", weight_gradient(xla)), ("taps", weight_gradient(taps)),
                                      ("im2col", weight_gradient(im2col))], (x, w, dy, pad)),
                 ("input gradient", [("xla", input_gradient(xla)), ("taps", input_gradient(taps)),
                                     ("im2col", input_gradient_col2im)], (x, w, dy, pad))]
        for what, ways, args in cases:
            reference = None
            for name, f in ways:
                ms, result = milliseconds(f, args)
                reference = result if reference is None else reference
                diff = float(jnp.max(jnp.abs(result - reference)))
                print(f"  {what:16s} {name:7s} {ms:7.2f} ms {gflop / ms * 1e3:6.0f} GFLOP/s  {diff:.1e}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from jaxcnn import hostmem

    hostmem.keep_freed_memory()
    main()
