"""Write Fashion-MNIST as an image folder of PNGs, for benchmarks and the README example:

    python benchmarks/make_imagefolder.py /tmp/fashion_folder

gives ROOT/train/<class>/<index>.png (60,000) and ROOT/test/<class>/<index>.png (10,000), with
class folders that sort in label order ("0_T-shirt-top", "1_Trouser", ...). Then train with
``--set data.dataset=imagefolder --set "data.data_dir='/tmp/fashion_folder'"``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import pathlib
import re
import time

import numpy as np
from PIL import Image

from jaxcnn import datasets


def folder_names(class_names: tuple[str, ...]) -> list[str]:
    """Filesystem-safe class folder names that sort in label order."""
    digits = len(str(len(class_names) - 1))
    return [f"{label:0{digits}d}_{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}"
            for label, name in enumerate(class_names)]


def write_split(folder: pathlib.Path, images: np.ndarray, labels: np.ndarray,
                names: list[str]) -> None:
    """images[i] as folder/<class of labels[i]>/<i>.png."""
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)

    def write(index: int) -> None:
        image = images[index]
        picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        picture.save(folder / names[labels[index]] / f"{index}.png")

    with concurrent.futures.ThreadPoolExecutor() as pool:
        list(pool.map(write, range(len(labels))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=pathlib.Path, help="folder to write (made if missing)")
    parser.add_argument("--dataset", default="fashion_mnist", help="a built-in dataset name")
    args = parser.parse_args()
    start = time.perf_counter()
    data = datasets.load(args.dataset)
    names = folder_names(data.class_names)
    write_split(args.root / "train", data.train_images, data.train_labels, names)
    write_split(args.root / "test", data.test_images, data.test_labels, names)
    print(f"wrote {data.num_train} + {data.num_test} PNGs of {args.dataset} to {args.root} "
          f"in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
