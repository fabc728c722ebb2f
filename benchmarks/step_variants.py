"""LeNet-5's training step, written several ways, timed inside the whole step on XLA:CPU.

    python benchmarks/step_variants.py                         # every variant, batch 128, 3 rounds
    python benchmarks/step_variants.py --variants xla,flat_adam --batch-size 1024

The probes behind the README's CPU lever table. Every variant is the same LeNet-5 (jaxcnn's
``LeNet5`` Module, Adam, softmax cross-entropy, synthetic 28x28x1 batch, donated state), jitted
as one step; only one part changes:

- ``xla``: NHWC with ``nn.Conv`` and XLA's derived gradients (``LeNet5(lowering="xla")``);
- ``rows``: as jaxcnn trains it on a CPU: the batch row-major, each convolution one banded
  matrix product (``LeNet5(lowering="rows")``, ``jaxcnn.models.rows``);
- ``taps_conv1``: the 1-channel first convolution as 25 shifted multiply-adds with a
  ``custom_vjp`` (weight gradient as 25 reductions) and ``lax.optimization_barrier`` on its
  output, so XLA cannot recompute the sum inside its consumers;
- ``col2im_conv2``: the second convolution's input gradient as one matrix product
  ``dy @ W^T`` and a col2im (shifted adds), behind ``lax.optimization_barrier``;
- ``col2im_dus_conv2``: the same product computed tap-major (``[K, K, N, OH, OW, C]``, so each
  tap's piece is contiguous) and added in place, tap by tap (``dynamic_update_slice``): the
  default before ``rows``;
- ``valid_conv2``: that input gradient as an explicit pad + VALID convolution of the flipped
  kernel (what XLA builds, with the padding outside the convolution);
- ``nchw``: the convolutions in NCHW / OIHW (transposes around them, for XLA to fold into
  layouts);
- ``flat_adam``: Adam over one flattened parameter vector (``optax.flatten``): a few large
  update operations instead of a few per parameter.

Each measurement is a fresh process, variants alternate and rotate every round; printed:
images/s median [min-max] and the ratio to ``xla``.
"""

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("xla", "rows", "taps_conv1", "col2im_conv2", "col2im_dus_conv2", "valid_conv2", "nchw",
            "flat_adam")
NHWC = ("NHWC", "HWIO", "NHWC")


def build_conv(variant: str):
    """The ``conv_general_dilated`` that ``nn.Conv`` calls in ``variant`` (None: XLA's own)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    def as_pairs(padding):
        return ((0, 0), (0, 0)) if padding == "VALID" else tuple(tuple(p) for p in padding)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def taps(x, w, pad):  # x [N, H, W, 1], w [K, K, 1, O]
        return _taps(x, w, pad)

    def _shifted(x, k, pad):
        x = jnp.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
        oh, ow = x.shape[1] - k + 1, x.shape[2] - k + 1
        return [x[:, i:i + oh, j:j + ow, :] for i in range(k) for j in range(k)]

    def _taps(x, w, pad):
        k = w.shape[0]
        return sum(p * w[t // k, t % k, 0] for t, p in enumerate(_shifted(x, k, pad)))

    def taps_fwd(x, w, pad):
        return lax.optimization_barrier(_taps(x, w, pad)), (x, w)

    def taps_bwd(pad, res, dy):
        x, w = res
        k = w.shape[0]
        dw = jnp.stack([jnp.einsum("nhwc,nhwo->co", p, dy) for p in _shifted(x, k, pad)])
        return jnp.zeros_like(x), dw.reshape(w.shape)

    taps.defvjp(taps_fwd, taps_bwd)

    def xla_conv(x, w, pad):
        return lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=NHWC)

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def own_input_gradient(x, w, pad):
        return xla_conv(x, w, pad)

    def oig_fwd(x, w, pad):
        return xla_conv(x, w, pad), (x, w)

    def oig_bwd(pad, res, dy):
        x, w = res
        kh, kw, ci, co = w.shape
        dw = jax.vjp(lambda w_: xla_conv(x, w_, pad), w)[1](dy)[0]
        if variant == "col2im_dus_conv2":
            n, oh, ow, _ = dy.shape
            pieces = jnp.einsum("nhwo,ijco->ijnhwc", dy, w)  # tap-major: each piece contiguous
            dxp = jnp.zeros((n, oh + kh - 1, ow + kw - 1, ci), dy.dtype)
            for i in range(kh):
                for j in range(kw):
                    here = lax.dynamic_slice(dxp, (0, i, j, 0), (n, oh, ow, ci))
                    dxp = lax.dynamic_update_slice(dxp, here + pieces[i, j], (0, i, j, 0))
            dxp = lax.optimization_barrier(dxp)
        elif variant == "col2im_conv2":
            n, oh, ow, _ = dy.shape
            cols = (dy.reshape(-1, co) @ w.reshape(-1, co).T).reshape(n, oh, ow, kh, kw, ci)
            dxp = sum(jnp.pad(cols[:, :, :, i, j, :], ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0)))
                      for i in range(kh) for j in range(kw))
            dxp = lax.optimization_barrier(dxp)
        else:  # valid_conv2
            flipped = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
            dyp = jnp.pad(dy, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
            dxp = lax.conv_general_dilated(dyp, flipped, (1, 1), "VALID", dimension_numbers=NHWC)
        (t, _), (l, _) = pad
        return dxp[:, t:t + x.shape[1], l:l + x.shape[2]], dw

    own_input_gradient.defvjp(oig_fwd, oig_bwd)

    def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
             preferred_element_type=None):
        pad = as_pairs(padding)
        if variant == "taps_conv1" and lhs.shape[-1] == 1:
            return taps(lhs, rhs, pad)
        if variant in ("col2im_conv2", "col2im_dus_conv2", "valid_conv2") and lhs.shape[-1] > 1:
            return own_input_gradient(lhs, rhs, pad)
        if variant == "nchw":
            y = lax.conv_general_dilated(lhs.transpose(0, 3, 1, 2), rhs.transpose(3, 2, 0, 1),
                                         (1, 1), pad, dimension_numbers=("NCHW", "OIHW", "NCHW"))
            return y.transpose(0, 2, 3, 1)
        return xla_conv(lhs, rhs, pad)

    return None if variant in ("xla", "rows", "flat_adam") else conv


def run_variant(variant: str, batch_size: int, images: int) -> dict:
    sys.path.insert(0, ROOT)
    from jaxcnn import hostmem

    hostmem.keep_freed_memory()
    import flax.linen as nn
    import jax
    import numpy as np
    import optax

    from jaxcnn.models.lenet import LeNet5

    hook = build_conv(variant)
    if variant == "rows":
        model = LeNet5(lowering="rows")
    else:
        model = LeNet5(lowering="xla",
                       conv=functools.partial(nn.Conv, conv_general_dilated=hook) if hook else nn.Conv)
    rng = np.random.default_rng(0)
    x = jax.numpy.asarray(rng.normal(size=(batch_size, 28, 28, 1)).astype(np.float32))
    y = jax.numpy.asarray(rng.integers(0, 10, batch_size))
    params = model.init(jax.random.key(0), x)["params"]
    tx = optax.flatten(optax.adam(1e-3)) if variant == "flat_adam" else optax.adam(1e-3)
    opt_state = tx.init(params)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, x, y):
        def loss_fn(p):
            logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    for _ in range(10):
        params, opt_state, loss = step(params, opt_state, x, y)
    jax.block_until_ready(loss)
    steps = max(20, images // batch_size)
    t = time.perf_counter()
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, x, y)
    jax.block_until_ready(loss)
    return {"images_per_s": steps * batch_size / (time.perf_counter() - t), "loss": float(loss)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=30720)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_variant(args.worker, args.batch_size, args.images)))
        return
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            parser.error(f"unknown variant {v!r}: choose from {', '.join(VARIANTS)}")
    results = {v: [] for v in variants}
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for r in range(args.rounds):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", v,
                                  "--batch-size", str(args.batch_size), "--images", str(args.images)],
                                 capture_output=True, text=True, env=env)
            if out.returncode != 0:
                sys.exit(f"variant {v} failed:\n{out.stderr[-3000:]}")
            results[v].append(json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"])
            print(f"  {v}: {results[v][-1]:,.0f}", file=sys.stderr, flush=True)
    base = statistics.median(results[variants[0]])
    print(f"| variant | LeNet-5 step, batch {args.batch_size}: images/s median [min-max] | ratio |")
    print("|---|---|---|")
    for v in variants:
        vals = results[v]
        print(f"| {v} | {statistics.median(vals):,.0f} [{min(vals):,.0f}-{max(vals):,.0f}] | "
              f"{statistics.median(vals) / base:.2f}x |")


if __name__ == "__main__":
    main()
