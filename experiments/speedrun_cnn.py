"""Speedrun: the configurable CNN to 93% Fashion-MNIST test accuracy on a laptop CPU.

cnn_bn.py widened to three conv blocks (32-64-128 channels, BatchNorm, spatial dropout 0.1, a
128-unit hidden layer; 241,994 parameters), random horizontal flips, Adam 3e-3 with cosine decay
over 15 epochs and label smoothing 0.1; evaluated with test-time flips (``eval_flip``: each test
image classified by the mean of its own and its mirror's logits; without them seed 1 ends at
0.9299, with them both seeds 0 and 1 pass 93% at epoch 11), and with a moving average of the
weights (``ema_decay`` 0.998: seed 0 passes 93% at epoch 9, seed 1 at epoch 11). (At 2e-3 it first reached 0.9333;
after later changes to the order of floating-point sums it ended at 0.9291, best 0.9295: 2e-3
sat at the edge of 93%.) Measure with
``python benchmarks/time_to_accuracy.py experiments/speedrun_cnn.py --target 0.93``.
"""

from jaxcnn.config import extend

config = extend(__file__, "cnn_bn.py", {
    "model": {"cdims": (32, 64, 128), "hdims": (128,)},
    "data": {"flip": True},
    "epochs": 15,
    "optimizer": {"learning_rate": 3e-3},
    "label_smoothing": 0.1,
    "eval_flip": True,
    "ema_decay": 0.998,
})
