"""torchvision's AlexNet on Fashion-MNIST, with the small-input stem (conv1 3x3 stride 1).

28x28x1 -> conv1 28 -> pool 13 -> conv2 13 -> pool 6 -> conv3-5 6 -> pool 2 -> adaptive 6x6 ->
the unchanged 9216-4096-4096 classifier with dropout 0.5 (57.0 M parameters). Momentum SGD with
weight decay and cosine decay; a short warmup keeps the first steps of the deep plain network
stable.
"""

config = {
    "model": {"name": "alexnet", "small_input": True},
    "data": {"dataset": "fashion_mnist"},
    "epochs": 15,
    "batch_size": 128,
    "optimizer": {"name": "momentum", "learning_rate": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "warmup_cosine", "warmup_epochs": 1},
}
