"""A/B measurements of jaxcnn's CPU levers: XLA flags, host device counts and model settings, in one run.

    python benchmarks/cpu_levers.py --models lenet5 --batch-sizes 128 --rounds 3 \\
        --variant 1dev=JAXCNN_CPU_DEVICES=1 \\
        --variant 2dev="--xla_force_host_platform_device_count=2" \\
        --variant vec512="JAXCNN_CPU_DEVICES=1 --xla_cpu_prefer_vector_width=512"
    python benchmarks/cpu_levers.py --models resnet20 --variant xla=model.lowering=xla --variant auto=
    python benchmarks/cpu_levers.py --models cnn_bn --variant before=checkout=../jaxcnn-old --variant now=

Each ``--variant NAME=SPEC`` is one configuration of jaxcnn's Trainer (what the launcher runs):
SPEC's ``VAR=VALUE`` words are environment variables, its ``model.KEY=VALUE`` words settings of
the model (VALUE as JSON where it parses, else a string), its ``--flags`` are ``XLA_FLAGS``
(with none of them, jaxcnn's default: ``jaxcnn.cpu_devices``), its ``checkout=PATH`` another clone
of jaxcnn to run instead of this one (another commit: ``git worktree add ../jaxcnn-old HEAD~1``);
``--torch`` adds the plain PyTorch loop. Every measurement is a fresh process
(``benchmarks/train_speed.py``'s worker), the variants alternate and their order rotates every
round, so all see the same machine. Printed: images/s median [min-max] per variant, and its ratio
to the first variant (and to PyTorch when measured).
"""

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_speed  # noqa: E402


def environment(spec: str) -> dict:
    """The worker's environment for a variant: ``NAME=VALUE`` words set variables
    (``JAXCNN_CPU_DEVICES=1``), the ``--flags`` are ``XLA_FLAGS``."""
    words = spec.split()
    env = dict(w.split("=", 1) for w in words
               if "=" in w and not w.startswith(("-", "model.", "checkout=")))
    env["XLA_FLAGS"] = " ".join(w for w in words if w.startswith("-"))
    return dict(os.environ, **env)


def _json_or_text(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value


def checkout(spec: str) -> str | None:
    """The clone of jaxcnn a variant runs: its ``checkout=PATH`` word, else None (this one)."""
    paths = [w[len("checkout="):] for w in spec.split() if w.startswith("checkout=")]
    for path in paths:
        if not os.path.isfile(os.path.join(path, "benchmarks", "train_speed.py")):
            sys.exit(f"checkout={path}: no benchmarks/train_speed.py there; give the path of "
                     "another clone (or git worktree) of jaxcnn.")
    return paths[-1] if paths else None


def model_options(spec: str) -> dict:
    """The variant's model settings: its ``model.KEY=VALUE`` words."""
    pairs = (w[len("model."):].split("=", 1) for w in spec.split() if w.startswith("model."))
    return {key: _json_or_text(value) for key, value in pairs}


def main():
    parser = train_speed.measurement_arguments(__doc__, "lenet5", "128")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=SPEC")
    parser.add_argument("--torch", action="store_true", help="measure the PyTorch loop too")
    args = parser.parse_args()
    variants = [v.split("=", 1) if "=" in v else (v, "") for v in args.variant] or [("base", "")]
    # Each variant's clone, read once: a wrong path stops here, before anything is measured.
    clones = {name: checkout(flags) for name, flags in variants}
    sides = [(name, "jaxcnn", flags) for name, flags in variants]
    if args.torch:
        sides.append(("pytorch", "torch", ""))
    for model in args.models.split(","):
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            results = {name: [] for name, _, _ in sides}
            for r in range(args.rounds):
                k = r % len(sides)
                for name, side, flags in sides[k:] + sides[:k]:
                    result = train_speed.measure(side, model, bs, args, environment(flags),
                                                 model_options(flags), clones.get(name))
                    results[name].append(result["images_per_s"])
                    print(f"  {model} {bs} {name}: {results[name][-1]:,.0f}", file=sys.stderr,
                          flush=True)
            first = statistics.median(results[sides[0][0]])
            peer = statistics.median(results["pytorch"]) if args.torch else None
            for name, _, flags in sides:
                med = statistics.median(results[name])
                line = (f"| {model} | {bs} | {name} | {train_speed.spread(results[name])} | "
                        f"{med / first:.2f}x |")
                if peer:
                    line += f" {med / peer:.2f}x |"
                print(line, flush=True)


if __name__ == "__main__":
    main()
