"""Compile-time plans of the zoo's ImageNet models on TPU slices (needs libtpu:
pip install -e ".[tpu]"): memory per chip, GFLOP per image and the roofline estimate of
images/s, as a Markdown table for the README. ESTIMATES from compilation, not measurements.

    python benchmarks/plan_zoo.py [--targets tpu-v5e-8,tpu-v6e-8] [--models resnet50,...]

Each model is planned with experiments/resnet50_imagenet.py's recipe (224 x 224 random-resized
crops, streamed, 1000 classes) at a global batch of 128 per chip, float32 or --precision.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxcnn import config as config_lib, plan  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default="tpu-v5e-8,tpu-v6e-8")
    parser.add_argument("--models", default="alexnet,vgg16,googlenet,resnet18,resnet50")
    parser.add_argument("--batch-per-chip", type=int, default=128)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    base = config_lib.load_experiment(os.path.join(ROOT, "experiments", "resnet50_imagenet.py"))
    print("| model | target | memory per chip (train step) | GFLOP per image (train) | "
          "estimated images/s | bound | compile |")
    print("|---|---|---|---|---|---|---|")
    for target in args.targets.split(","):
        chips = int(target.rsplit("-", 1)[1])
        for name in args.models.split(","):
            sets = [f"model.name={name}", f"batch_size={args.batch_per_chip * chips}", *args.sets]
            config = config_lib.resolve(base, sets)
            start = time.perf_counter()
            result = plan.plan(config, target)
            train = result["programs"][0]
            chip = result["chip"]
            compute = train.flops / chip.peak_bf16_flops
            memory = train.bytes_accessed / chip.hbm_bytes_per_s
            step = max(compute, memory)
            per_image = train.flops * result["devices"] / result["global_batch"] / 1e9
            print(f"| {name} | {target} | {train.total_bytes / 2**30:.2f} of "
                  f"{chip.hbm_bytes / 2**30:.0f} GiB | {per_image:.1f} | "
                  f"{result['global_batch'] / step:,.0f} | "
                  f"{'compute' if compute >= memory else 'memory'} | "
                  f"{time.perf_counter() - start:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
