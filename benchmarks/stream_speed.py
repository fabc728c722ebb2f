"""Host decoding speed of the streaming pipeline: images/s that grain delivers with 0, 1 and 2
worker processes, for Fashion-MNIST in memory and as a folder of PNGs.

    python benchmarks/make_imagefolder.py /tmp/fashion_folder   # once
    python benchmarks/stream_speed.py --folder /tmp/fashion_folder

Each measurement reads a fresh stream (worker start-up included, as a run pays it once) of
`--batches` batches of 128 with the small-image augmentation (pad 2 + crop + flip), or with
`--image-size`, random-resized crops.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxcnn import datasets, stream  # noqa: E402


def measure(source, workers: int, batches: int, augmentation) -> tuple[float, float]:
    """(images/s over the whole read, seconds to the first batch)."""
    layout = stream.Layout(global_batch=128, steps_per_epoch=len(source) // 128)
    start = time.perf_counter()
    it = stream.train_batches(source, seed=0, layout=layout, start_step=0, num_steps=batches,
                              augmentation=augmentation, num_workers=workers)
    try:
        first = None
        for _ in it:
            first = first or time.perf_counter() - start
    finally:
        it.close()
    return batches * 128 / (time.perf_counter() - start), first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", help="an image folder of Fashion-MNIST (make_imagefolder.py)")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--image-size", type=int, default=None)
    args = parser.parse_args()
    augmentation = stream.Augmentation(image_size=args.image_size,
                                       random_resized_crop=bool(args.image_size),
                                       crop_padding=0 if args.image_size else 2, flip=True)
    sources = {"fashion_mnist in memory": datasets.open_streaming("fashion_mnist").train}
    if args.folder:
        sources["fashion_mnist PNG folder"] = datasets.open_streaming(
            "imagefolder", args.folder).train
    print(f"{os.cpu_count()} cores; {args.batches} batches of 128; {augmentation}")
    print("| source | workers | images/s | first batch |")
    print("|---|---|---|---|")
    for name, source in sources.items():
        for workers in (int(w) for w in args.workers.split(",")):
            rate, first = measure(source, workers, args.batches, augmentation)
            print(f"| {name} | {workers} | {rate:,.0f} | {first:.2f} s |", flush=True)


if __name__ == "__main__":
    main()
