"""Training speed of jaxcnn beside the plain PyTorch loop, measured in one run.

    python benchmarks/train_speed.py                       # lenet5, cnn_bn, resnet20; batch 128, 1024
    python benchmarks/train_speed.py --models lenet5 --batch-sizes 128 --rounds 5

Each measurement runs in a fresh process, jaxcnn and PyTorch alternating (the order flips every
round), so both see the same machine. Both sides train the same model (same layers, same
parameter count) on the same data with the same batch size and optimizer:

- jaxcnn: ``jaxcnn.train.Trainer``, what ``python -m jaxcnn.launch`` runs (one device, the data on
  the device, gather + normalisation inside the jitted step, ``keep_freed_memory`` as the
  launcher does);
- PyTorch: the loop a user would write, ``zero_grad / forward / backward / step`` over
  normalised float tensors held in memory, indexed by a shuffled permutation, default threads.

A worker trains ``--warmup`` steps (jaxcnn: compiling included), then times the next steps up
to ``--images`` images. Printed: images/s median [min-max] over the rounds, the ratio
jaxcnn / PyTorch, jaxcnn's compile time (reported apart, not in the images/s), and the share of
jaxcnn's step time that its input pipeline (gather + normalise a batch) takes when run alone.

Data: Fashion-MNIST (28x28x1) for lenet5 and cnn_bn; generated 32x32x3 images for resnet20
(the CIFAR shape; speed does not depend on the pixel values).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (jaxcnn model config, optimizer config, data)
MODELS = {
    "lenet5": ({"name": "lenet5"}, {"name": "adam", "learning_rate": 1e-3}, "fashion_mnist"),
    "cnn_bn": ({"name": "cnn", "batch_norm": True, "dropout": 0.1},
               {"name": "adam", "learning_rate": 1e-3}, "fashion_mnist"),
    "resnet20": ({"name": "resnet20"},
                 {"name": "momentum", "learning_rate": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
                 "generated_32x32x3"),
}
DEFAULT_IMAGES = {"lenet5": 30720, "cnn_bn": 15360, "resnet20": 4096}


def load_data(kind: str):
    """uint8 images [N, H, W, C], int32 labels [N]."""
    if kind == "fashion_mnist":
        sys.path.insert(0, ROOT)
        from jaxcnn import datasets

        d = datasets.load("fashion_mnist", None)
        return d.train_images, d.train_labels.astype(np.int32)
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (10240, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, 10240).astype(np.int32))


# -- jaxcnn ----------------------------------------------------------------------------------

def run_jaxcnn(model: str, batch_size: int, warmup: int, images: int, model_options: dict) -> dict:
    sys.path.insert(0, ROOT)
    from jaxcnn import config as config_lib, cpu_devices, hostmem, replicas

    hostmem.keep_freed_memory()
    model_config, optimizer, kind = MODELS[model]
    model_config = dict(model_config, **model_options)
    # The launcher's run of this config (LeNet-5 on Fashion-MNIST, 10 epochs) on these cores:
    # process replicas (one single-core process per core), else one host device per core
    config = config_lib.resolve({"model": model_config, "optimizer": optimizer,
                                 "batch_size": batch_size, "epoch_loop": "step",
                                 "data": {"dataset": "fashion_mnist"}})
    if replicas.plan(config) == 1:
        cpu_devices.request()
    import jax

    from jaxcnn import datasets, input_pipeline, train

    x, y = load_data(kind)
    data = datasets.Dataset(kind, x, y, x[:1000], y[:1000], 10, tuple(map(str, range(10))), "benchmark")
    t = time.perf_counter()
    mesh = train.mesh_for(config, data)
    trainer = train.Trainer(config, data, mesh, train.replicas_for(config, data, mesh))
    setup = time.perf_counter() - t
    steps = min(images // batch_size, trainer.steps_per_epoch - warmup)
    run = trainer.run_train_steps(0)  # the launcher's own loop, queue depth included
    for _ in range(warmup):
        _, sums = next(run)
    jax.block_until_ready(sums)
    t = time.perf_counter()
    for _ in range(steps):
        _, sums = next(run)
    jax.block_until_ready(sums)
    step_seconds = (time.perf_counter() - t) / steps

    # The input pipeline alone: the same gather + normalisation the step does, jitted.
    @jax.jit
    def batch_only(images_, labels_, perm_, step):
        idx = jax.lax.dynamic_slice(perm_, (step * batch_size,), (batch_size,))
        return input_pipeline.make_batch(images_, labels_, idx, idx, normalize=trainer.normalize)

    feed, perm = trainer.feed, trainer.feed.permutation(0)
    jax.block_until_ready(batch_only(feed.train_images, feed.train_labels, perm, 0))
    t = time.perf_counter()
    for step in range(steps):
        out = batch_only(feed.train_images, feed.train_labels, perm, step)
    jax.block_until_ready(out)
    pipeline_seconds = (time.perf_counter() - t) / steps
    trainer.close()
    return {"images_per_s": batch_size / step_seconds,
            "compile_s": trainer.compile_seconds, "setup_s": setup,
            "pipeline_share": pipeline_seconds / step_seconds, "params": trainer.param_count,
            "devices": trainer.num_devices * trainer.replicas}


# -- PyTorch ---------------------------------------------------------------------------------

def torch_model(model: str, in_channels: int):
    import torch.nn as nn

    if model == "lenet5":
        return nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    if model == "cnn_bn":
        return nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Dropout2d(0.1),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Dropout2d(0.1), nn.Flatten(), nn.Linear(3136, 32), nn.ReLU(), nn.Linear(32, 10))
    return _torch_resnet20()


def _torch_resnet20():
    """ResNet-20 with option-A shortcuts, as jaxcnn's ``resnet20``."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.extra = cout - cin

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            if self.extra:  # option A: subsample and append zero channels
                x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, self.extra))
            return F.relu(y + x)

    class ResNet20(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(16)
            blocks, cin = [], 16
            for cout, stride in ((16, 1), (32, 2), (64, 2)):
                for i in range(3):
                    blocks.append(Block(cin, cout, stride if i == 0 else 1))
                    cin = cout
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = self.blocks(F.relu(self.bn(self.conv(x))))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    return ResNet20()


def run_torch(model: str, batch_size: int, warmup: int, images: int, model_options: dict) -> dict:
    import torch

    _, optimizer, kind = MODELS[model]
    x, y = load_data(kind)
    x = torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2).contiguous() / 255.0
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    y = torch.tensor(y, dtype=torch.long)
    torch.manual_seed(0)
    net = torch_model(model, x.shape[1])
    if optimizer["name"] == "adam":
        opt = torch.optim.Adam(net.parameters(), optimizer["learning_rate"])
    else:
        opt = torch.optim.SGD(net.parameters(), optimizer["learning_rate"],
                              momentum=optimizer["momentum"], weight_decay=optimizer["weight_decay"])
    loss_fn = torch.nn.CrossEntropyLoss()
    perm = torch.randperm(len(y))
    net.train()

    def step(i):
        idx = perm[i * batch_size:(i + 1) * batch_size]
        opt.zero_grad()
        loss = loss_fn(net(x[idx]), y[idx])
        loss.backward()
        opt.step()

    steps = min(images // batch_size, len(y) // batch_size - warmup)
    for i in range(warmup):
        step(i)
    t = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    seconds = time.perf_counter() - t
    return {"images_per_s": steps * batch_size / seconds, "threads": torch.get_num_threads(),
            "params": sum(p.numel() for p in net.parameters())}


# -- driver ----------------------------------------------------------------------------------

def measure(side: str, model: str, batch_size: int, args, env: dict | None = None,
            model_options: dict | None = None, checkout: str | None = None) -> dict:
    """One fresh worker process's result; ``env``: its environment (default: ours, no XLA_FLAGS);
    ``model_options``: settings added to jaxcnn's model config (``{"lowering": "xla"}``);
    ``checkout``: another clone of jaxcnn whose worker (and code) to run (default: this one)."""
    script = (os.path.join(os.path.abspath(checkout), "benchmarks", "train_speed.py") if checkout
              else os.path.abspath(__file__))
    cmd = [sys.executable, script, "--worker", side, "--models", model,
           "--batch-sizes", str(batch_size), "--warmup", str(args.warmup),
           "--images", str(args.images or DEFAULT_IMAGES[model]),
           "--model-options", json.dumps(model_options or {})]
    env = dict(os.environ, XLA_FLAGS="") if env is None else env
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"{side} worker failed ({model}, batch {batch_size}, "
                 f"XLA_FLAGS={env.get('XLA_FLAGS', '')!r}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def spread(values) -> str:
    return f"{statistics.median(values):,.0f} [{min(values):,.0f}-{max(values):,.0f}]"


def measurement_arguments(description: str, models: str, batch_sizes: str) -> argparse.ArgumentParser:
    """The command line both benchmarks share (what to measure, how often), with their defaults."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--models", default=models)
    parser.add_argument("--batch-sizes", default=batch_sizes)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--images", type=int, default=None,
                        help="images timed per measurement (default: per model)")
    return parser


def main():
    parser = measurement_arguments(__doc__, "lenet5,cnn_bn,resnet20", "128,1024")
    parser.add_argument("--worker", choices=("jaxcnn", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--model-options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = args.models.split(",")
    for m in models:
        if m not in MODELS:
            parser.error(f"unknown model {m!r}: choose from {', '.join(MODELS)}")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    if args.worker:
        run = run_jaxcnn if args.worker == "jaxcnn" else run_torch
        print(json.dumps(run(models[0], batch_sizes[0], args.warmup,
                             args.images or DEFAULT_IMAGES[models[0]], json.loads(args.model_options))))
        return

    import jax
    import torch

    print(f"jax {jax.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs; "
          f"{args.rounds} rounds, fresh process per measurement, sides alternating")
    rows = []
    for model in models:
        for bs in batch_sizes:
            results = {"jaxcnn": [], "torch": []}
            for r in range(args.rounds):
                order = ("jaxcnn", "torch") if r % 2 == 0 else ("torch", "jaxcnn")
                for side in order:
                    results[side].append(measure(side, model, bs, args))
            jx = [r["images_per_s"] for r in results["jaxcnn"]]
            pt = [r["images_per_s"] for r in results["torch"]]
            params = (results["jaxcnn"][0]["params"], results["torch"][0]["params"])
            row = (f"| {model} | {bs} | {spread(jx)} | {spread(pt)} | "
                   f"{statistics.median(jx) / statistics.median(pt):.2f}x | "
                   f"{statistics.median(r['compile_s'] for r in results['jaxcnn']):.1f} s | "
                   f"{100 * statistics.median(r['pipeline_share'] for r in results['jaxcnn']):.1f}% | "
                   f"{results['jaxcnn'][0]['devices']} |")
            if params[0] != params[1]:
                row += f" (parameters differ: {params[0]:,} vs {params[1]:,})"
            print(row, flush=True)
            rows.append(row)
    print("\n| model | batch | jaxcnn img/s median [min-max] | PyTorch eager img/s | ratio | "
          "jaxcnn compile | input pipeline share of step | jaxcnn devices |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
