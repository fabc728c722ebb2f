"""Classify image files with a trained run: ``python -m jaxcnn.predict RUN_DIR IMAGE...``.

Each PNG or JPEG is converted to the data set's channels (greyscale for MNIST and Fashion-MNIST,
RGB for CIFAR), resized to the training images' size and normalised exactly as in training, and
the top-5 classes are printed with their names and probabilities.

The model only knows images like its training set: MNIST and Fashion-MNIST are light objects on
a black background, so a dark object photographed on white paper needs inverting first (it is
not done here, since that would be a guess).
"""

import argparse
import sys

import numpy as np

from jaxcnn.errors import UserError, report


def load_image(path: str, image_shape) -> np.ndarray:
    """The PNG or JPEG at ``path`` as uint8 [H, W, C] for images of ``image_shape`` (H, W, C):
    greyscale ('L') for one channel, RGB for three, resized (bilinear) when its size differs."""
    from PIL import Image, UnidentifiedImageError

    h, w, c = image_shape
    try:
        with Image.open(path, formats=["PNG", "JPEG"]) as image:
            image = image.convert("L" if c == 1 else "RGB")
            if image.size != (w, h):
                image = image.resize((w, h), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, np.uint8)
    except FileNotFoundError:
        raise UserError(f"The image {path!r} does not exist.") from None
    except UnidentifiedImageError:
        raise UserError(f"Cannot read the image {path!r}: it is not a PNG or JPEG file.") from None
    except OSError as e:  # a damaged or truncated file, a directory, no permission
        raise UserError(f"Cannot read the image {path!r} ({e}).") from None
    return pixels.reshape(h, w, c)


def top_k(logits: np.ndarray, class_names, k: int = 5) -> list[tuple[str, float]]:
    """The ``k`` most probable (class name, softmax probability) pairs of one logit vector."""
    logits = np.asarray(logits, np.float64)
    probabilities = np.exp(logits - logits.max())
    probabilities /= probabilities.sum()
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [(class_names[i], float(probabilities[i])) for i in order]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcnn.predict",
        description="Print the top-5 classes of PNG/JPEG images with a trained run's model. "
                    "Images are converted to the data set's channels, resized to its image size "
                    "and normalised as in training. MNIST and Fashion-MNIST images are light "
                    "objects on a black background: invert a dark object on white first.")
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="a run directory (the --workdir of a run)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    parser.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                        help="the checkpoint to use (default: best test accuracy)")
    parser.add_argument("--top", type=int, default=5, metavar="K", help="classes to print (5)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from jaxcnn.restore import restore

        run = restore(args.run_dir, args.checkpoint)
        images = np.stack([load_image(path, run.image_shape) for path in args.images])
        logits = run.logits(images)
    except UserError as e:
        return report(e, args.debug)
    print(f"{args.run_dir}: {run.config['model']['name']} on {run.info['data']['dataset']}, "
          f"{args.checkpoint} checkpoint (step {run.step})")
    width = max(len(name) for name in run.class_names)
    for path, row in zip(args.images, logits):
        print(path)
        for rank, (name, p) in enumerate(top_k(row, run.class_names, args.top), 1):
            print(f"  {rank}. {name:<{width}}  {p:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
