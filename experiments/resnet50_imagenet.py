"""ResNet-50 (He et al. 2016) on ImageNet (ILSVRC-2012, 1.28 M training images, 1000 classes).

The recipe of Goyal et al. 2017 with label smoothing (Szegedy et al. 2016): momentum SGD 0.9,
learning rate 0.1 x batch / 256 (here 0.4 for batch 1024; change both together), 5 linear warmup
epochs then cosine decay, weight decay 1e-4, label smoothing 0.1, 90 epochs. Training images are
random-resized crops (8-100% of the area) of 224 x 224 with flips; test images are resized to 256
and centre-cropped to 224.

The data is streamed: TFDS `imagenet2012` prepared as array_record in $TFDS_DATA_DIR, or an
ImageNet folder with train/<synset>/*.JPEG and val/<synset>/*.JPEG:
    --set data.dataset=imagefolder --set data.data_dir=/data/imagenet
Its layers, shapes and parameter counts: python -m jaxcnn.summary resnet50.
"""

BATCH_SIZE = 1024

config = {
    "model": {"name": "resnet50"},
    "data": {"dataset": "imagenet2012", "pipeline": "stream", "image_size": 224,
             "random_resized_crop": True, "flip": True},
    "epochs": 90,
    "batch_size": BATCH_SIZE,
    "eval_batch_size": 1000,
    "optimizer": {"name": "momentum", "learning_rate": 0.1 * BATCH_SIZE / 256, "momentum": 0.9,
                  "weight_decay": 1e-4},
    "schedule": {"name": "warmup_cosine", "warmup_epochs": 5},
    "label_smoothing": 0.1,
}
