"""LeNet-5 exactly as in LeCun, Bottou, Bengio & Haffner, "Gradient-based learning applied to
document recognition", Proc. IEEE 1998, section II.B.

    x [N, 32, 32, 1]
    C1  conv 5x5, 6 maps                          -> [N, 28, 28, 6]     156 parameters
    S2  2x2 subsampling, per map: average x coefficient + bias, then f
                                                  -> [N, 14, 14, 6]      12
    C3  conv 5x5, 16 maps, each on the subset of S2's maps given by the paper's Table I
                                                  -> [N, 10, 10, 16]  1,516
    S4  2x2 subsampling as S2                     -> [N, 5, 5, 16]       32
    C5  conv 5x5, 120 maps (a dense layer on 5x5 inputs) -> [N, 1, 1, 120]  48,120
    F6  dense 84                                  -> [N, 84]         10,164
    output: 10 Euclidean RBF units, y_i = sum_j (x_j - w_ij)^2, with fixed prototypes w_i

Every layer up to F6 is followed by the squashing function f(a) = 1.7159 tanh(2a/3) (A = 1.7159,
S = 2/3, so that f(1) = 1 and f(-1) = -1). Trainable parameters: 156 + 12 + 1,516 + 32 + 48,120 +
10,164 = 60,000, the paper's count. The 84 x num_classes RBF prototypes (840 for 10 classes) are
fixed, not trained: they are in the ``constants`` collection (non-trainable parameters).

The paper drew the digit prototypes as stylised 7x12 bitmaps and notes that random +-1 codes
would also do; we use random +-1 codes (a fixed seed, the same for every run), which fit any
dataset. The model returns ``-y`` as logits: the nearest prototype has the largest logit, and
softmax cross-entropy on ``-y`` is the paper's discriminative criterion (its equation 9) without
the rejection constant ``j``.

28x28 inputs (MNIST, Fashion-MNIST): set ``conv1_padding=2``. The paper centred its 28x28 digits in
a 32x32 field; a 2-pixel zero padding of C1 does the same and keeps every later shape.

Initialisation as in the paper (appendix A): weights uniform in [-2.4/F, 2.4/F] with F the fan-in
of the unit; the subsampling coefficients start at 1, biases at 0.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.models.layers import check_int

# Table I of the paper: the S2 maps each C3 map reads. Maps 0-5 read 3 neighbouring maps,
# 6-11 four neighbouring maps, 12-14 four non-neighbouring maps, and 15 all six.
C3_TABLE = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)

PROTOTYPE_SEED = 1998


def squash(x):
    """The paper's sigmoid: f(a) = A tanh(S a) with A = 1.7159 and S = 2/3."""
    return 1.7159 * jnp.tanh(2.0 / 3.0 * x)


def lecun_uniform_2_4(fan_in: int):
    """U(-2.4/F, 2.4/F), F = fan-in (the paper's appendix C)."""
    bound = 2.4 / fan_in

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def rbf_prototypes(num_classes: int, dim: int = 84) -> np.ndarray:
    """Fixed +-1 prototypes, one row per class; the same for every run."""
    rng = np.random.default_rng(PROTOTYPE_SEED)
    return rng.choice(np.array([-1.0, 1.0], np.float32), size=(num_classes, dim))


class Subsampling(nn.Module):
    """S2/S4: 2x2 average per map, times a trainable coefficient, plus a trainable bias."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, h, w, c = x.shape
        coefficient = self.param("coefficient", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        x = jnp.mean(x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))
        return x * coefficient.astype(self.dtype) + bias.astype(self.dtype)


class SparseConv(nn.Module):
    """C3: a 5x5 convolution in which output map j sees only the input maps ``table[j]``.

    Holds exactly the connected weights: ``kernel`` [5, 5, sum of the table sizes] (map 0's
    weights for its inputs, then map 1's, ...) and one bias per output map. It runs as one dense
    convolution whose unconnected weights are fixed zeros (on XLA:CPU far faster than grouped
    convolutions over gathered maps); ``jaxcnn.summary`` counts only the connected weights.
    """

    table: tuple = C3_TABLE
    kernel_size: int = 5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k, c_in, c_out = self.kernel_size, x.shape[-1], len(self.table)
        sizes = [len(t) for t in self.table]
        kernel = self.param("kernel", _sparse_init(self.table, k), (k, k, sum(sizes)))
        bias = self.param("bias", nn.initializers.zeros, (c_out,))
        rows = np.concatenate([np.asarray(t) for t in self.table])
        cols = np.repeat(np.arange(c_out), sizes)
        dense = jnp.zeros((k, k, c_in, c_out), self.dtype).at[:, :, rows, cols].set(kernel.astype(self.dtype))
        y = jax.lax.conv_general_dilated(x, dense, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias.astype(self.dtype)

    def summary_cost(self, input_shape, output_shape):
        """(FLOPs, multiply-accumulates) of one call, counting the table's connections only."""
        positions = int(np.prod(output_shape[:-1]))
        macs = positions * self.kernel_size ** 2 * sum(len(t) for t in self.table)
        return 2 * macs + positions * len(self.table), macs


def _sparse_init(table, k):
    """U(-2.4/F, 2.4/F) for each output map's weights, F = k * k * (that map's input count)."""
    bounds = np.concatenate([np.full(len(t), 2.4 / (k * k * len(t)), np.float32) for t in table])

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * jnp.asarray(bounds, dtype)

    return init


class EuclideanRBF(nn.Module):
    """y_i = sum_j (x_j - w_ij)^2 with fixed prototypes w (the ``constants`` collection).

    The prototypes are a pure function of (num_classes, dim), so when a caller's variables lack
    the ``constants`` collection (the trainer keeps only params and batch_stats) the layer
    rebuilds them instead of failing.
    """

    num_classes: int

    @nn.compact
    def __call__(self, x):
        make = lambda: jnp.asarray(rbf_prototypes(self.num_classes, x.shape[-1]))  # noqa: E731
        if self.has_variable("constants", "prototypes") or self.is_mutable_collection("constants"):
            w = self.variable("constants", "prototypes", make).value
        else:
            w = make()
        w = w.astype(x.dtype)
        return jnp.sum(jnp.square(x[:, None, :] - w[None, :, :]), axis=-1)


class LeNet5Classic(nn.Module):
    """The 1998 LeNet-5. ``__call__(x [N, 32, 32, C], train) -> logits = -RBF distances``."""

    num_classes: int = 10
    conv1_padding: int = 0
    dtype: Any = jnp.float32

    def __post_init__(self):
        check_int(self.conv1_padding, "conv1_padding", allow_zero=True)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no dropout or normalisation
        x = x.astype(self.dtype)
        p, c_in = self.conv1_padding, x.shape[-1]
        x = nn.Conv(6, (5, 5), padding=((p, p), (p, p)), dtype=self.dtype,
                    kernel_init=lecun_uniform_2_4(25 * c_in), name="C1")(x)
        x = Subsampling(self.dtype, name="S2")(squash(x))
        x = SparseConv(dtype=self.dtype, name="C3")(squash(x))
        x = Subsampling(self.dtype, name="S4")(squash(x))
        x = nn.Conv(120, (5, 5), padding="VALID", dtype=self.dtype,
                    kernel_init=lecun_uniform_2_4(25 * 16), name="C5")(squash(x))
        x = squash(x).reshape((x.shape[0], -1))
        x = squash(nn.Dense(84, dtype=self.dtype, kernel_init=lecun_uniform_2_4(x.shape[-1]), name="F6")(x))
        distances = EuclideanRBF(self.num_classes, name="output")(x)
        return -distances.astype(jnp.float32)
