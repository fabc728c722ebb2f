"""cnn.py with BatchNorm after each convolution."""

from jaxcnn.config import extend

config = extend("cnn.py", {"model": {"batch_norm": True}})
