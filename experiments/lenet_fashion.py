"""Modern LeNet-5 on Fashion-MNIST: lenet.py with the dataset changed."""

from jaxcnn.config import extend

config = extend(__file__, "lenet.py", {"data": {"dataset": "fashion_mnist"}})
