"""VGG-16 with BatchNorm on CIFAR-10 (32x32: four pools, 2x2 maps into the adaptive 7x7 pool),
the usual CIFAR recipe: momentum SGD 0.05, weight decay 5e-4, crop and flip, cosine decay."""

config = {
    "model": {"name": "vgg16_bn", "small_input": True},
    "data": {"dataset": "cifar10", "crop_padding": 4, "flip": True},
    "epochs": 60,
    "batch_size": 128,
    "optimizer": {"name": "momentum", "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "warmup_cosine", "warmup_epochs": 1},
}
