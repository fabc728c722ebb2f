"""The paper's AlexNet (Krizhevsky, Sutskever & Hinton 2012) on CIFAR-10: two towers as grouped
convolutions (conv2, conv4, conv5 in 2 groups), 96-256-384-384-256 channels, local response
normalisation after conv1 and conv2, dropout 0.5 in the classifier.

Small-input stem for 32x32 images (conv1 3x3 stride 1); the 4096-4096 classifier is unchanged.
The paper's optimiser: momentum SGD 0.9, weight decay 5e-4, learning rate 0.01 (here with a
one-epoch warmup and cosine decay instead of dividing by 10 by hand), random crops and flips.
"""

config = {
    "model": {"name": "alexnet_original", "small_input": True},
    "data": {"dataset": "cifar10", "crop_padding": 4, "flip": True},
    "epochs": 30,
    "batch_size": 128,
    "optimizer": {"name": "momentum", "learning_rate": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "warmup_cosine", "warmup_epochs": 1},
}
