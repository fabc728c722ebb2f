"""Plan an experiment for an accelerator you do not have yet: compile its real train and eval
steps ahead of time and print what they need per device.

    python -m jaxcnn.plan EXPERIMENT.py --target TARGET [--set KEY=VALUE ...] [--num-classes N]

TARGET is ``cpu`` (this machine's devices), ``tpu-<generation>-<size>`` as Cloud TPU names
slices (``tpu-v5e-1``, ``tpu-v5e-8``, ``tpu-v6e-8``, ``tpu-v4-8``, ``tpu-v5p-8``,
``tpu-v5e-256``: v5e and v6e count chips, v4 and v5p count TensorCores), or a libtpu topology
(``v5e:2x4``). TPU targets need libtpu (``pip install -e ".[tpu]"``), which compiles for a TPU
topology on a machine without one.

The programs are the Trainer's own (jaxcnn.feed: the same per-device functions under shard_map
over every device of the target, the same shardings), compiled for one training step and one
evaluation batch. No data is read: the image shape and class count come from the dataset's
record (or ``data.image_size`` and ``--num-classes``). Printed per device: argument, temporary
and total memory against the device's HBM, FLOPs and bytes per step (XLA's cost analysis), the
all-reduce bytes, and a roofline ESTIMATE of step time and images/s from the chip's published
peak bf16 FLOP/s and HBM bandwidth (XLA:TPU runs float32 matrix products as one bfloat16 pass
by default). Exit status 0 when the step fits, 2 with one paragraph when it does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import time

from jaxcnn import native_stderr
from jaxcnn.errors import UserError, report


@dataclasses.dataclass(frozen=True)
class ChipSpec:
    """Published figures of one TPU chip (Cloud TPU documentation)."""

    name: str
    hbm_bytes: int
    peak_bf16_flops: float  # FLOP/s
    hbm_bytes_per_s: float


CHIPS = {
    "TPU v4": ChipSpec("TPU v4", 32 * 2**30, 275e12, 1228e9),
    "TPU v5 lite": ChipSpec("TPU v5e", 16 * 2**30, 197e12, 819e9),
    "TPU v5": ChipSpec("TPU v5p", 95 * 2**30, 459e12, 2765e9),
    "TPU v6 lite": ChipSpec("TPU v6e", 32 * 2**30, 918e12, 1640e9),
}
# Datasets without a record in jaxcnn.datasets.records: (classes, channels).
KNOWN_TFDS = {"imagenet2012": (1000, 3), "imagenette": (10, 3), "imagewang": (20, 3)}
_DTYPE_BYTES = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s16": 2,
                "u16": 2, "s8": 1, "u8": 1, "pred": 1, "s64": 8, "u64": 8}


def topology_name(target: str) -> tuple[str, tuple[int, int, int] | None]:
    """libtpu's topology name (and chips per host, when one host holds them all) of a target."""
    if ":" in target:
        return target, None
    match = re.fullmatch(r"tpu-(v4|v5e|v5p|v6e)-(\d+)", target)
    if not match:
        raise UserError(
            f"Unknown --target {target!r}. Use cpu, tpu-<generation>-<size> (tpu-v5e-1, "
            "tpu-v5e-8, tpu-v6e-8, tpu-v4-8, tpu-v5p-8, tpu-v5e-256, ...) or a libtpu topology "
            "such as v5e:2x4.")
    generation, size = match.group(1), int(match.group(2))
    if generation in ("v5e", "v6e"):  # 2D tori, sized in chips, up to 8 chips on one host
        x = 2 ** (int(math.log2(size)) // 2)
        if x * (size // x) != size:
            raise UserError(f"--target {target}: {size} chips do not form a slice; use 1, 4, 8, "
                            "16, 32, 64, 128 or 256.")
        one_host = (x, size // x, 1) if size <= 8 else None
        return f"{generation}:{x}x{size // x}", one_host
    chips = size // 2  # v4 and v5p are named by TensorCores, two per chip; 3D tori from 2x2x1
    if chips < 4 or chips & (chips - 1):
        raise UserError(f"--target {target}: use 8, 16, 32, ... (two TensorCores per chip, at "
                        "least 4 chips).")
    dims = [2, 2, 1] if chips == 4 else [2, 2, 2]
    while math.prod(dims) < chips:  # 2x2x2 -> 2x2x4 -> 2x4x4 -> 4x4x4 -> 4x4x8 ...
        smallest = min(dims)
        last = max(i for i, v in enumerate(dims) if v == smallest)
        dims[last] *= 2
    return f"{generation}:{'x'.join(map(str, dims))}", None


def target_devices(target: str):
    """(devices, chip spec or None) of ``target``."""
    import jax

    if target == "cpu":
        return jax.devices("cpu"), None
    name, one_host = topology_name(target)
    if not native_stderr.libtpu_installed():
        raise UserError(
            f"--target {target} compiles for a TPU, which needs libtpu, and it is not installed. "
            "Install the libtpu that matches your jaxlib with: pip install -e \".[tpu]\" (the "
            "same as pip install \"jax[tpu]\"), then run this again.")
    from jax.experimental import topologies

    # libtpu lets one process at a time use it (/tmp/libtpu_lockfile); compiling touches no
    # TPU, so several plans (or a plan beside a run on a TPU VM) may share it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    options = {"chips_per_host_bounds": one_host} if one_host else {}
    try:
        with native_stderr.captured():
            devices = topologies.get_topology_desc(platform="tpu", topology_name=name, **options).devices
    except Exception as e:  # noqa: BLE001 - libtpu's own message says what it did not know
        raise UserError(f"libtpu does not know the topology {name!r} of --target {target} "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:200]}).") from None
    kind = devices[0].device_kind
    chip = CHIPS.get(kind)
    cores_per_chip = len(devices) // len({tuple(d.coords) for d in devices})
    if chip is not None and cores_per_chip > 1:  # one device per TensorCore: a share of the chip
        chip = ChipSpec(f"{chip.name} TensorCore", chip.hbm_bytes // cores_per_chip,
                        chip.peak_bf16_flops / cores_per_chip, chip.hbm_bytes_per_s / cores_per_chip)
    return devices, chip


def data_shape(config: dict, num_classes: int | None):
    """((H, W, C), classes, training examples, test examples) without reading any data."""
    from jaxcnn.datasets import records

    d = config["data"]
    record = records.BUILTIN.get(d["dataset"])
    size = d["image_size"]
    if record is not None:
        shape = (size, size, record.image_shape[2]) if size else record.image_shape
        return shape, num_classes or record.num_classes, record.num_train, record.num_test
    classes, channels = KNOWN_TFDS.get(d["dataset"], (None, 3))
    classes = num_classes or classes
    if not size or not classes:
        raise UserError(
            f"jaxcnn has no record of the dataset {d['dataset']!r}, so its image size and class "
            "count are not known without the data. Give them: --set data.image_size=224 "
            "--num-classes 1000.")
    return (size, size, channels), classes, 1_281_167, 50_000


@dataclasses.dataclass
class ProgramPlan:
    """What one compiled program needs per device."""

    name: str
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    flops: float
    bytes_accessed: float
    all_reduce_bytes: int
    compile_seconds: float

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


def _all_reduce_bytes(hlo_text: str) -> int:
    """Bytes of the results of every all-reduce in optimised HLO text (one device's view)."""
    total = 0
    for line in hlo_text.splitlines():
        if " all-reduce(" not in line and " all-reduce-start(" not in line:
            continue
        result = line.split("=", 1)[1].split("all-reduce", 1)[0]
        for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", result):
            count = math.prod(int(x) for x in dims.split(",") if x) if dims else 1
            total += count * _DTYPE_BYTES.get(dtype, 4)
    return total


class DoesNotFit(Exception):
    """XLA refused to compile a program: its temporaries exceed the device's memory."""

    def __init__(self, name: str, temp_bytes: float, available_bytes: float):
        super().__init__(name)
        self.name, self.temp_bytes, self.available_bytes = name, temp_bytes, available_bytes


def _compile(name: str, jitted, args) -> ProgramPlan:
    start = time.perf_counter()
    lowered = jitted.lower(*args)
    try:
        with native_stderr.captured():
            compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - XLA:TPU refuses programs larger than HBM
        found = re.search(r"HLO temporaries \(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)", str(e))
        if found is None:
            raise
        raise DoesNotFit(name, float(found.group(1)) * 2**30, float(found.group(2)) * 2**30) from None
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return ProgramPlan(name, memory.argument_size_in_bytes, memory.output_size_in_bytes,
                       memory.alias_size_in_bytes, memory.temp_size_in_bytes,
                       float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)),
                       _all_reduce_bytes(compiled.as_text()), seconds)


def plan(config: dict, target: str, num_classes: int | None = None) -> dict:
    """Compiles ``config``'s train and eval steps for ``target``; returns what they need."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jaxcnn import feed, input_pipeline, train
    from jaxcnn.models import layers

    devices, chip = target_devices(target)
    mesh = Mesh(devices, (train.AXIS,))
    n = mesh.size
    train.check_batch_size(config["batch_size"], n, f" of {target}")
    shape, classes, num_train, num_test = data_shape(config, num_classes)
    if config["batch_size"] > num_train:
        raise UserError(f"batch_size {config['batch_size']} is larger than the {num_train:,} "
                        "training examples: lower batch_size.")
    d = config["data"]
    # Without data, 'auto' on a dataset that is not built in is planned as the stream it would
    # most likely be (ImageNet-size data).
    streaming = feed.planned_pipeline(d) != "memory"
    normalize = input_pipeline.Normalization((0.5,) * shape[2], (0.25,) * shape[2])
    settings = train.StepSettings.of(config, num_train=num_train, num_test=num_test,
                                     num_devices=n, image_shape=shape, normalize=normalize,
                                     streaming=streaming)
    model, step_model, _, tx = train.model_and_optimizer(config, classes, settings.steps_per_epoch)
    abstract = jax.eval_shape(lambda: train.create_train_state(
        model, tx, shape, config["seed"], ema=config["ema_decay"] is not None))
    rep, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P(train.AXIS))

    def spec(tree, sharding=rep):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)

    state = spec(abstract).replace(apply_fn=step_model.apply)
    train_zero, eval_zero = train.zero_sums(abstract.replace(apply_fn=model.apply),
                                            settings.eval_batch_size, shape)
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
    if streaming:
        train_fn, eval_fn = feed.stream_programs(mesh, settings)

        def batch(size, mask):
            b = {"image": jax.ShapeDtypeStruct((size, *shape), jnp.uint8, sharding=rows),
                 "label": jax.ShapeDtypeStruct((size,), jnp.int32, sharding=rows)}
            return {**b, "mask": jax.ShapeDtypeStruct((size,), jnp.bool_, sharding=rows)} if mask else b

        train_args = (state, spec(train_zero), batch(settings.batch_size, False))
        eval_args = (state, spec(eval_zero), batch(settings.eval_batch_size, True))
    else:
        train_fn, eval_fn = feed.memory_programs(mesh, settings, "step")
        data = lambda count: (jax.ShapeDtypeStruct((count, *shape), jnp.uint8, sharding=rep),  # noqa: E731
                              jax.ShapeDtypeStruct((count,), jnp.int32, sharding=rep))
        perm = jax.ShapeDtypeStruct((num_train,), jnp.int32, sharding=rep)
        seed_key = jax.ShapeDtypeStruct(input_pipeline.seed_key_data(0).shape, jnp.uint32, sharding=rep)
        train_args = (state, spec(train_zero), *data(num_train), perm, seed_key, scalar, scalar)
        eval_args = (state, spec(eval_zero), *data(num_test), scalar)
    try:
        # The models choose their CPU forms by the platform they are traced for, not this host's.
        with layers.compiling_for("cpu" if target == "cpu" else "tpu"):
            programs = [_compile("train step", train_fn, train_args),
                        _compile("eval batch", eval_fn, eval_args)]
    except DoesNotFit as e:
        per_device = config["batch_size"] // n
        fit = max(1, int(per_device * e.available_bytes / e.temp_bytes * 0.9))
        raise UserError(
            f"The {e.name} of this experiment does not fit on {target}: XLA needs "
            f"{_gib(e.temp_bytes)} of temporaries per device, more than the "
            f"{_gib(e.available_bytes)} of HBM it can use on a {devices[0].device_kind} (batch "
            f"{per_device} per device). About {fit} images per device would fit (temporaries "
            f"grow with the batch): --set batch_size={fit * n}, or use a larger slice.") from None
    hosts = len({getattr(dev, "process_index", 0) for dev in devices})
    return {"target": target, "devices": n, "hosts": hosts, "device_kind": devices[0].device_kind,
            "chip": chip, "image_shape": shape, "num_classes": classes,
            "pipeline": "stream" if streaming else "memory",
            "batch_per_device": config["batch_size"] // n, "global_batch": config["batch_size"],
            "param_count": sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params)),
            "programs": programs}


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _flop(n: float) -> str:
    for unit, scale in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= scale:
            return f"{n / scale:,.2f} {unit}"
    return f"{n:,.0f} FLOP"


def format_plan(p: dict) -> str:
    chip = p["chip"]
    lines = [
        f"target {p['target']}: {p['devices']} x {p['device_kind']}"
        + (f" on {p['hosts']} hosts" if p["hosts"] > 1 else "")
        + f"; {p['pipeline']} pipeline; images {p['image_shape']}, {p['num_classes']} classes; "
        f"{p['param_count']:,} parameters; global batch {p['global_batch']} "
        f"({p['batch_per_device']} per device)"]
    hbm = f" of {_gib(chip.hbm_bytes)} HBM" if chip else ""
    for prog in p["programs"]:
        lines.append(
            f"{prog.name} (compiled in {prog.compile_seconds:.0f} s), per device: memory "
            f"{_gib(prog.total_bytes)}{hbm} (arguments {_gib(prog.argument_bytes)}, temporaries "
            f"{_gib(prog.temp_bytes)}); {_flop(prog.flops)} and {_gib(prog.bytes_accessed)} "
            f"accessed; all-reduce {_gib(prog.all_reduce_bytes)}")
    train_prog = p["programs"][0]
    lines.append(f"per image: {_flop(train_prog.flops * p['devices'] / p['global_batch'])} per "
                 "training step (forward and backward)")
    if chip:
        compute = train_prog.flops / chip.peak_bf16_flops
        memory = train_prog.bytes_accessed / chip.hbm_bytes_per_s
        step = max(compute, memory)
        lines.append(
            f"ESTIMATE (roofline from {chip.name}'s published {chip.peak_bf16_flops / 1e12:.0f} "
            f"TFLOP/s bf16 and {chip.hbm_bytes_per_s / 1e9:.0f} GB/s, not a measurement): "
            f"{step * 1e3:.2f} ms per step ({'compute' if compute >= memory else 'memory'}-bound), "
            f"{p['global_batch'] / step:,.0f} images/s at best")
    return "\n".join(lines)


def check_fits(p: dict) -> None:
    """UserError (one paragraph) when a program does not fit the device's memory."""
    chip = p["chip"]
    if chip is None:
        return
    worst = max(p["programs"], key=lambda prog: prog.total_bytes)
    if worst.total_bytes <= chip.hbm_bytes:
        return
    fixed = worst.total_bytes - worst.temp_bytes
    if fixed >= chip.hbm_bytes:
        advice = ("Even without temporaries its arguments (parameters, optimizer state and, with "
                  "the memory pipeline, the dataset) exceed it: use --set data.pipeline=stream "
                  "or a larger slice.")
    else:
        fit = max(1, int(p["batch_per_device"] * (chip.hbm_bytes - fixed) / worst.temp_bytes))
        advice = (f"About {fit} images per device would fit (temporaries grow with the batch): "
                  f"--set batch_size={fit * p['devices']}, or use a larger slice.")
    raise UserError(
        f"The {worst.name} of this experiment needs {_gib(worst.total_bytes)} per device on "
        f"{p['target']}, more than the {_gib(chip.hbm_bytes)} of HBM of a {chip.name} "
        f"(batch {p['batch_per_device']} per device). {advice}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxcnn.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", help="experiment file (.py defining `config`)")
    parser.add_argument("--target", required=True, help="cpu, tpu-v5e-8, tpu-v6e-1, v5e:2x4, ...")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--num-classes", type=int, help="for datasets jaxcnn has no record of")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from jaxcnn import config as config_lib

        config = config_lib.resolve(config_lib.load_experiment(args.experiment), args.sets)
        if args.target != "cpu":
            topology_name(args.target)  # a bad name is refused before anything is compiled
        result = plan(config, args.target, args.num_classes)
        print(format_plan(result))
        check_fits(result)
    except UserError as e:
        return report(e, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
