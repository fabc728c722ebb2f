"""Data parallelism inside one CPU: one XLA device per core, for models with enough work a step.

XLA:CPU gives a process one host device whose operations share the cores through one thread
pool. For a convolution network with enough arithmetic a step, splitting each batch over one
device per core (the same data-parallel step as on several GPUs, its gradients averaged by an
all-reduce) is faster than that: measured on 2 cores (``benchmarks/cpu_levers.py``), the CNN
with BatchNorm 1.04-1.22x at batch 128 and 1.49x at 1024, ResNet-20 1.31x and 1.53x. LeNet-5
has too little (0.85 MFLOP an image): its halves of a batch-128 step ran 0.83-0.92x as fast as
the whole on one device, at batch 1024 1.00-1.04x. So:

- ``request()`` (the launcher calls it before JAX starts its backends) asks XLA for one host
  device per usable core, unless the user already chose (``--xla_force_host_platform_device_count``
  in ``XLA_FLAGS``, or ``JAXCNN_CPU_DEVICES=N``; ``JAXCNN_CPU_DEVICES=1`` turns this off), or the
  run spans several processes;
- ``choose(devices, batch_size, flops_per_example)`` then trains on as many of those devices as
  keep at least ``MIN_FLOPS_PER_DEVICE`` forward FLOPs of the batch on each and divide the batch
  evenly: LeNet-5 at batch 128 stays on one device, the CNN and ResNet-20 use every core.

The math does not depend on the device count (BatchNorm statistics and the loss are averaged
over the global batch, dropout and augmentation are keyed by example position), so a run gives
the same results on 1 or 2 devices up to the order of floating-point sums. Devices the user asked
for (``XLA_FLAGS``, ``JAXCNN_CPU_DEVICES=N``) and GPUs/TPUs are all used, as before.
"""

import os

ENV = "JAXCNN_CPU_DEVICES"
XLA_COUNT_FLAG = "--xla_force_host_platform_device_count"
# A device's share of a step's forward pass below which splitting lost or gained nothing (LeNet-5:
# 0.055 GFLOP at batch 128 lost, 0.44 GFLOP at 1024 broke even; the CNN's 0.52 GFLOP won).
MIN_FLOPS_PER_DEVICE = 2e8

_requested = False  # whether request() made the host devices (then choose() may use fewer)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def one_core_each(local_devices: list) -> bool:
    """Whether ``local_devices`` (this process's devices of a mesh) are CPU devices with at most
    one core each: one device per usable core or more (the launcher's default split)."""
    return (bool(local_devices) and local_devices[0].platform == "cpu"
            and len(local_devices) >= usable_cores())


def request(multi_process: bool = False, environ=os.environ) -> int | None:
    """Asks XLA for one host device per usable core (before JAX starts its backends: it reads
    ``XLA_FLAGS`` once). Returns the count asked for, or None where the user already chose, the
    run spans several processes, ``JAXCNN_CPU_DEVICES=1`` turns it off, or there is one core.
    An explicit ``JAXCNN_CPU_DEVICES=N`` asks for N devices that are then all used."""
    global _requested
    value = environ.get(ENV, "auto").strip().lower()
    flags = environ.get("XLA_FLAGS", "")
    if multi_process or XLA_COUNT_FLAG in flags:
        return None
    if value == "auto":
        count = usable_cores()
        _requested = count > 1
    elif value.isdigit() and int(value) >= 1:
        count = int(value)
    else:
        from jaxcnn.errors import UserError

        raise UserError(f"{ENV}={environ[ENV]!r} is not a device count: set it to a positive "
                        "integer (1 turns the split off) or to 'auto' (the default: one device "
                        "per core for models with enough work a step).")
    if count <= 1:
        return None
    environ["XLA_FLAGS"] = f"{flags} {XLA_COUNT_FLAG}={count}".strip()
    return count


def choose(devices: list, batch_size: int, flops_per_example: float | None) -> list:
    """The devices to train on: all of ``devices`` unless ``request()`` made them, and then the
    most (1, 2, ... len) that divide ``batch_size`` and keep ``MIN_FLOPS_PER_DEVICE`` forward
    FLOPs of the batch on each (``flops_per_example``: the model's forward FLOPs per image)."""
    if not _requested or not devices or devices[0].platform != "cpu" or flops_per_example is None:
        return list(devices)
    best = 1
    for n in range(2, len(devices) + 1):
        if batch_size % n == 0 and flops_per_example * batch_size / n >= MIN_FLOPS_PER_DEVICE:
            best = n
    return list(devices[:best])


def requested() -> bool:
    """Whether ``request()`` made this process's host devices (``choose`` may then use fewer, so
    any batch size divides over the devices a run uses)."""
    return _requested
