"""ResNet-18 (He et al. 2016) on your own photos, trained from scratch.

Point it at a folder with train/<class>/* and test/<class>/* (or val/), JPEG or PNG:
    python -m jaxcnn.launch experiments/resnet18_imagefolder.py --set data.data_dir=~/photos
Training images are random-resized crops of 224 x 224 with flips, test images resized to 256
and centre-cropped (the ImageNet views); class names are the folder names. Small folders
(hundreds of images per class) overfit a network this size: watch the test curve, or try
--set model.name=resnet18 --set data.image_size=112 for a quicker run.
"""

BATCH_SIZE = 64

config = {
    "model": {"name": "resnet18"},
    "data": {"dataset": "imagefolder", "data_dir": None, "image_size": 224,
             "random_resized_crop": True, "flip": True},
    "epochs": 40,
    "batch_size": BATCH_SIZE,
    "eval_batch_size": 256,
    "optimizer": {"name": "momentum", "learning_rate": 0.1 * BATCH_SIZE / 256, "momentum": 0.9,
                  "weight_decay": 1e-4},
    "schedule": {"name": "warmup_cosine", "warmup_epochs": 2},
    "label_smoothing": 0.1,
}
