"""cnn.py with BatchNorm after each convolution, lighter dropout (p=0.1) and 20 epochs.

BatchNorm regularises by itself, so p=0.2 on top underfits (0.913 after 10 epochs); this recipe
reaches the 92% target.
"""

from jaxcnn.config import extend

config = extend(__file__, "cnn.py", {"model": {"batch_norm": True, "dropout": 0.1}, "epochs": 20})
