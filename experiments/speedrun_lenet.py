"""Speedrun: modern LeNet-5 to 91% Fashion-MNIST test accuracy, fast on a laptop CPU.

lenet_fashion.py with a higher peak learning rate (Adam 2e-3, cosine decay over 12 epochs) and
label smoothing 0.1. Measure with
``python benchmarks/time_to_accuracy.py experiments/speedrun_lenet.py --target 0.91``.
"""

from jaxcnn.config import extend

config = extend(__file__, "lenet_fashion.py", {
    "epochs": 12,
    "optimizer": {"learning_rate": 2e-3},
    "label_smoothing": 0.1,
})
