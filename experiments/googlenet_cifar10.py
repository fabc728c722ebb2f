"""GoogLeNet with auxiliary classifiers on CIFAR-10 (small-input stem, crop and flip)."""

from jaxcnn.config import extend

config = extend(__file__, "googlenet_fashion.py", {
    "data": {"dataset": "cifar10", "crop_padding": 4, "flip": True},
    "epochs": 60,
})
