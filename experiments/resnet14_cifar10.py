"""The study notes' PyTorch-tutorial ResNet (resnet14: 16-32-64 channels, two blocks per stage,
projection shortcuts, 175,258 parameters) on CIFAR-10: momentum SGD 0.1, weight decay 5e-4,
crop and flip, the rate divided by 10 every 50 epochs over 150 epochs."""

config = {
    "model": {"name": "resnet14"},
    "data": {"dataset": "cifar10", "crop_padding": 4, "flip": True},
    "epochs": 150,
    "batch_size": 128,
    "optimizer": {"name": "momentum", "learning_rate": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "step", "boundaries": [50, 100], "decay_factor": 0.1},
}
