"""jaxcnn: the classic convolutional networks in JAX/Flax, with a functional training loop."""

from jaxcnn.models import MODELS, create_model

__version__ = "0.1.0"
__all__ = ["MODELS", "create_model", "__version__"]
