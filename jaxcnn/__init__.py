"""jaxcnn: the classic convolutional networks in JAX/Flax, with a functional training loop."""

from jaxcnn.models import MODELS, create_model
from jaxcnn.restore import Restored, restore  # jaxcnn.restore is the function, not its module

__version__ = "0.1.0"
__all__ = ["MODELS", "Restored", "create_model", "restore", "__version__"]
