"""The 1998 LeNet-5 on CIFAR-10 (32x32x3: C1 reads the three colour channels, 60,300 trainable
parameters). A small network for colour images; expect far below the CNNs that follow it."""

config = {
    "model": {"name": "lenet5_classic"},
    "data": {"dataset": "cifar10", "flip": True},
    "epochs": 30,
    "batch_size": 128,
    "optimizer": {"name": "adam", "learning_rate": 1e-3},
    "schedule": {"name": "cosine"},
}
