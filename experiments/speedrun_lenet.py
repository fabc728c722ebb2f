"""Speedrun: modern LeNet-5 to 91% Fashion-MNIST test accuracy, fast on a laptop CPU.

lenet_fashion.py for 10 epochs with a higher peak learning rate (Adam 3e-3, cosine decay), label
smoothing 0.1 and random horizontal flips, evaluated with test-time flips (``eval_flip``: each
test image classified by the mean of its own and its mirror's logits).

The sixteenth-sitting sweep (README lever table) took it here from 12 epochs at 2e-3 without
flips, which crossed 91% at epoch 9, 11 or 12 (seeds 0, 1, 2) and never with seeds 3 and 4: with
the flips in training and test it crosses at epoch 8, 7, 7, 8, 7 (seeds 0-4) and ends at
0.912-0.916. Test-time flips alone do not help (a model never shown mirrored images misreads
them: 0.82-0.89). Cut to 8 epochs it crosses earlier with seeds 0-2 (epochs 8, 6, 6) but never
with seed 3. Measure with
``python benchmarks/time_to_accuracy.py experiments/speedrun_lenet.py --target 0.91 --seeds 0,1,2``.
"""

from jaxcnn.config import extend

config = extend(__file__, "lenet_fashion.py", {
    "data": {"flip": True},
    "epochs": 10,
    "optimizer": {"learning_rate": 3e-3},
    "label_smoothing": 0.1,
    "eval_flip": True,
})
