"""ResNet-18 (torchvision's) on Fashion-MNIST with the small-input stem (3x3 stride-1 conv1, no
max-pool: the stages see 28, 14, 7 and 4 pixels). 11.2 M parameters."""

config = {
    "model": {"name": "resnet18", "small_input": True},
    "data": {"dataset": "fashion_mnist"},
    "epochs": 15,
    "batch_size": 128,
    "optimizer": {"name": "momentum", "learning_rate": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "warmup_cosine", "warmup_epochs": 1},
}
