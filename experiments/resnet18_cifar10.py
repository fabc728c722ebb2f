"""ResNet-18 on CIFAR-10 with the small-input stem: the common CIFAR recipe (momentum SGD 0.1,
weight decay 5e-4, crop and flip, cosine decay)."""

from jaxcnn.config import extend

config = extend(__file__, "resnet18_fashion.py", {
    "data": {"dataset": "cifar10", "crop_padding": 4, "flip": True},
    "epochs": 60,
})
