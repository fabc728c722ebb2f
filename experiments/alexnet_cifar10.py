"""torchvision's AlexNet on CIFAR-10 with the small-input stem, crop-and-flip augmentation."""

from jaxcnn.config import extend

config = extend(__file__, "alexnet_fashion.py", {
    "data": {"dataset": "cifar10", "crop_padding": 4, "flip": True},
    "epochs": 30,
})
