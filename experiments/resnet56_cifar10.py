"""ResNet-56 (853,018 parameters) with He et al.'s CIFAR-10 recipe; the paper: 6.97% test error."""

from jaxcnn.config import extend

config = extend(__file__, "resnet20_cifar10.py", {"model": {"name": "resnet56"}})
