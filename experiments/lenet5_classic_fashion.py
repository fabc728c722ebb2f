"""LeNet-5 as in the 1998 paper (scaled tanh, trainable subsampling, sparse C3, fixed RBF output)
on Fashion-MNIST.

28x28 images enter a 2-pixel-padded C1, as the paper's 32x32 field. 60,000 trainable parameters.
The paper trained with a stochastic diagonal Levenberg-Marquardt method; this recipe uses Adam
with cosine decay. Softmax cross-entropy on the negative RBF distances is the paper's
discriminative criterion without its rejection term.
"""

config = {
    "model": {"name": "lenet5_classic", "conv1_padding": 2},
    "data": {"dataset": "fashion_mnist"},
    "epochs": 20,
    "batch_size": 128,
    "optimizer": {"name": "adam", "learning_rate": 1e-3},
    "schedule": {"name": "cosine"},
}
