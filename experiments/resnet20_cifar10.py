"""ResNet-20 (option-A shortcuts, 269,722 parameters) on CIFAR-10 with He et al.'s recipe.

Section 4.2 of the paper: momentum SGD 0.1, weight decay 1e-4, batch 128, 4-pixel pad-and-crop
and flips, the rate divided by 10 at 32k and 48k iterations and training stopped at 64k (391
steps an epoch with all 50k training images: epochs 82, 123 and 164). The paper held out 5k
images for validation; this trains on all 50k. It reports 8.75% test error for ResNet-20.
"""

config = {
    "model": {"name": "resnet20"},
    "data": {"dataset": "cifar10", "crop_padding": 4, "flip": True},
    "epochs": 164,
    "batch_size": 128,
    "optimizer": {"name": "momentum", "learning_rate": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    "schedule": {"name": "step", "boundaries": [82, 123], "decay_factor": 0.1},
}
