"""ResNet-20 (option-A shortcuts) on Fashion-MNIST: 28 -> 14 -> 7 pixels over the three stages.
He et al.'s optimiser (momentum SGD 0.1, weight decay 1e-4) with a shorter cosine schedule."""

config = {
    "model": {"name": "resnet20"},
    "data": {"dataset": "fashion_mnist"},
    "epochs": 20,
    "batch_size": 128,
    "optimizer": {"name": "momentum", "learning_rate": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    "schedule": {"name": "cosine"},
}
