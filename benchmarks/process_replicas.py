"""LeNet-5 trained by one single-core process per core that add their gradients in shared memory,
as one program a step, beside the launcher and the plain PyTorch loop, measured in one run.

    python benchmarks/process_replicas.py                       # lenet5, batch 128, 3 rounds
    python benchmarks/process_replicas.py --batch-sizes 128,1024 --rounds 2

The launcher trains LeNet-5 with process replicas (jaxcnn/replicas.py: two programs a step, the
gradients and then the update, and a command through a pipe). This measures what they give as
one program a step: each replica process pins itself to one core (XLA then gives it one
thread), builds jaxcnn's ``Trainer`` for the model (data on the device, the same weights from
the same seed, the same normalisation and optimizer) and runs one program a step: apply the
previous step's summed gradients with the optimizer (on one flat parameter vector: Adam is
elementwise), then gather and normalise its rows of the global batch (the Trainer's epoch order)
and return the gradient of their share of the mean loss. The host adds the replicas' vectors in
shared memory, in the same order in every replica, so all hold the same weights bit for bit.
Timed: the steps after ``--warmup`` up to ``--images`` images. Checked: the replicas' weights
are equal, and against the ``Trainer``'s own first ``--warmup`` steps on one process they
differ only by the order of the sums (max relative difference printed).

Printed: images/s median [min-max] of one process (``train_speed.py``'s worker with
``JAXCNN_CPU_REPLICAS=1``), the launcher's choice (its replicas), these fused replicas and
PyTorch, fresh processes, the sides alternating. Only ``lenet5`` is offered (models with
BatchNorm sum statistics inside the forward pass).
"""

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_speed  # noqa: E402

ROOT = train_speed.ROOT


def run_replica(rank: int, world: int, path: str, batch_size: int, warmup: int, images: int) -> dict:
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[rank % len(cores)]})  # before JAX starts: one XLA thread
    sys.path.insert(0, ROOT)
    from jaxcnn import hostmem

    hostmem.keep_freed_memory()
    import jax
    import jax.numpy as jnp
    import optax
    from jax.flatten_util import ravel_pytree

    from jaxcnn import config as config_lib, datasets, input_pipeline, train
    from jaxcnn.replicas import Exchange  # the launcher's replicas' shared memory

    model_config, optimizer, kind = train_speed.MODELS["lenet5"]
    x, y = train_speed.load_data(kind)
    data = datasets.Dataset(kind, x, y, x[:1000], y[:1000], 10, tuple(map(str, range(10))), "benchmark")
    config = config_lib.resolve({"model": model_config, "optimizer": optimizer,
                                 "batch_size": batch_size, "epoch_loop": "step"})
    trainer = train.Trainer(config, data, train.mesh_for(config, data))
    assert trainer.num_devices == 1, trainer.num_devices
    feed, settings = trainer.feed, trainer.feed.settings
    local = batch_size // world
    flat, unravel = ravel_pytree(trainer.state.params)
    exchange = Exchange(path, world, flat.size + 1, rank, alive=lambda: None)

    tx = trainer.state.tx  # Adam is elementwise: on one flat vector as on the Trainer's leaves

    def apply(params, opt_state, summed):
        updates, opt_state = tx.update(summed[:-1], opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def gradients(params, images_, labels_, perm, step):
        """This replica's rows of step ``step``: (its share of the mean loss's gradient, loss sum)."""
        first = step * batch_size + rank * local
        indices = jax.lax.dynamic_slice(perm, (first,), (local,))
        positions = rank * local + jnp.arange(local, dtype=jnp.int32)
        batch = input_pipeline.make_batch(images_, labels_, indices, positions,
                                          normalize=settings.normalize)

        def loss_fn(params):
            logits = trainer.state.apply_fn({"params": unravel(params)}, batch["image"], train=True)
            return train.cross_entropy(logits, batch["label"], settings.label_smoothing).sum()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        return jnp.concatenate([grads / batch_size, loss[None]])

    def update_then_gradients(params, opt_state, summed, *args):
        params, opt_state = apply(params, opt_state, summed)
        return params, opt_state, gradients(params, *args)

    first_step = jax.jit(gradients)
    next_step = jax.jit(update_then_gradients, donate_argnums=(0, 1))
    update = jax.jit(apply)

    params, opt_state = jnp.copy(flat), tx.init(flat)
    perm = feed.permutation(0)
    args = (feed.train_images, feed.train_labels, perm)
    steps = warmup + min(images // batch_size, trainer.steps_per_epoch - warmup)
    t = checked = None
    for step in range(steps):
        if step == warmup:  # the weights after `warmup` steps, for the check below
            checked = np.asarray(update(params, opt_state, summed)[0])
            t = time.perf_counter()
        if step == 0:
            mine = first_step(params, *args, 0)
        else:
            params, opt_state, mine = next_step(params, opt_state, summed, *args, step)
        summed = exchange.sum(np.asarray(mine))
    params, opt_state = update(params, opt_state, summed)
    weights = np.asarray(params)
    seconds = time.perf_counter() - t
    result = {"images_per_s": (steps - warmup) * batch_size / seconds, "steps": steps}
    # Every replica's weights, summed: equal to world x rank 0's when all are the same.
    same = exchange.sum(np.concatenate([weights, [0.0]]).astype(np.float32))[:-1]
    result["replicas_equal"] = bool(np.array_equal(same, world * weights))
    if rank == 0:  # the first `warmup` steps by the Trainer itself, on this process
        run = trainer.run_train_steps(0)
        for _ in range(warmup):
            next(run)
        reference = np.asarray(ravel_pytree(trainer.state.params)[0])
        result["max_rel_diff"] = float(np.abs(checked - reference).max() / np.abs(reference).max())
    return result


def measure_replicas(batch_size: int, world: int, args) -> dict:
    """One run of ``world`` fresh replica processes; rank 0's result."""
    sys.path.insert(0, ROOT)
    from jaxcnn.replicas import Exchange

    path = Exchange.create(world, 61_706 + 1)
    try:
        procs = [subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--replica", str(rank), "--world", str(world),
             "--exchange", path, "--batch-sizes", str(batch_size), "--warmup", str(args.warmup),
             "--images", str(args.images or train_speed.DEFAULT_IMAGES["lenet5"])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, XLA_FLAGS="", JAXCNN_CPU_REPLICAS="1")) for rank in range(world)]
        outs = [p.communicate() for p in procs]
    finally:
        os.unlink(path)
    for p, (out, err) in zip(procs, outs):
        if p.returncode != 0:
            sys.exit(f"a replica failed (batch {batch_size}):\n{err[-3000:]}")
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    results[0]["replicas_equal"] = all(r["replicas_equal"] for r in results)
    return results[0]


def main():
    parser = train_speed.measurement_arguments(__doc__, "lenet5", "128")
    parser.add_argument("--world", type=int, default=None,
                        help="replica processes (default: one per usable core)")
    parser.add_argument("--replica", type=int, help=argparse_suppress())
    parser.add_argument("--exchange", help=argparse_suppress())
    args = parser.parse_args()
    if args.models != "lenet5":
        parser.error("only lenet5: models with BatchNorm sum statistics inside the forward pass")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    world = args.world or len(os.sched_getaffinity(0))
    if args.replica is not None:
        print(json.dumps(run_replica(args.replica, world, args.exchange, batch_sizes[0],
                                     args.warmup, args.images or train_speed.DEFAULT_IMAGES["lenet5"])))
        return
    if world < 2 or any(b % world for b in batch_sizes):
        parser.error(f"{world} replicas: need at least 2, dividing every batch size")

    print(f"{world} replica processes, one core each; {args.rounds} rounds, sides alternating")
    for bs in batch_sizes:
        sides = ("one process", "launcher", "fused replicas", "torch")
        results = {side: [] for side in sides}
        checks = []
        for r in range(args.rounds):
            k = r % len(sides)
            for side in sides[k:] + sides[:k]:
                if side == "fused replicas":
                    result = measure_replicas(bs, world, args)
                    checks.append((result["replicas_equal"], result["max_rel_diff"]))
                elif side == "torch":
                    result = train_speed.measure("torch", "lenet5", bs, args)
                else:
                    env = dict(os.environ, XLA_FLAGS="")
                    if side == "one process":
                        env["JAXCNN_CPU_REPLICAS"] = "1"
                    result = train_speed.measure("jaxcnn", "lenet5", bs, args, env)
                results[side].append(result["images_per_s"])
                print(f"  lenet5 {bs} {side}: {results[side][-1]:,.0f}", file=sys.stderr, flush=True)
        peer = statistics.median(results["torch"])
        for side in sides:
            med = statistics.median(results[side])
            print(f"| lenet5 | {bs} | {side} | {train_speed.spread(results[side])} | "
                  f"{med / peer:.2f}x |", flush=True)
        print(f"replicas' weights equal in every run: {all(c[0] for c in checks)}; against the "
              f"Trainer's same steps on one process: max relative difference "
              f"{max(c[1] for c in checks):.1e}")


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
