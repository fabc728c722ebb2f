"""GoogLeNet (torchvision's Inception v1) on Fashion-MNIST with both auxiliary classifiers.

Small-input stem: conv1 3x3 stride 1, no first max-pool (inception 3 at 14x14, 4 and the
auxiliary heads at 7x7, 5 at 4x4). The auxiliary losses (after 4a and 4d) count with weight 0.3
in training (``aux_loss_weight``); evaluation uses the main head only.
"""

config = {
    "model": {"name": "googlenet", "small_input": True, "aux_logits": True},
    "data": {"dataset": "fashion_mnist"},
    "aux_loss_weight": 0.3,
    "epochs": 15,
    "batch_size": 128,
    "optimizer": {"name": "momentum", "learning_rate": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "warmup_cosine", "warmup_epochs": 1},
}
