"""VGG-16 (configuration D, no BatchNorm) on Fashion-MNIST with the small-input option.

The fifth max-pool is dropped: 28 -> 14 -> 7 -> 3 -> 1, then the adaptive 7x7 pool feeds
torchvision's 25088-4096-4096 classifier (134.3 M parameters, as for ImageNet). Without BatchNorm
the 13 convolutions need a gentle start: He initialisation, a learning-rate warmup and gradient
clipping.
"""

config = {
    "model": {"name": "vgg16", "small_input": True},
    "data": {"dataset": "fashion_mnist"},
    "epochs": 15,
    "batch_size": 128,
    "optimizer": {"name": "momentum", "learning_rate": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
                  "grad_clip_norm": 5.0},
    "schedule": {"name": "warmup_cosine", "warmup_epochs": 1},
}
