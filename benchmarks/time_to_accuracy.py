"""Wall time from launch to a test accuracy: the speedrun benchmark.

    python benchmarks/time_to_accuracy.py experiments/speedrun_lenet.py --target 0.91
    python benchmarks/time_to_accuracy.py experiments/speedrun_cnn.py --target 0.93 --rounds 1
    python benchmarks/time_to_accuracy.py experiments/speedrun_lenet.py --target 0.91 --seeds 0,1,2

Starts ``python -m jaxcnn.launch EXPERIMENT --workdir <fresh temporary folder>`` and watches the
run's metrics.jsonl: the time is taken from just before the process starts (so Python start-up,
imports, loading the data and compiling all count) to the moment the first epoch line with
``test_accuracy >= target`` is written. The run is left to finish; its final accuracy and wall
time are reported too. With ``--rounds N`` it runs N times and prints the median; with
``--seeds 0,1,2`` it runs each seed (``--set seed=S``) and counts the seeds that got there.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_run(experiment: str, target: float, sets: list[str], timeout: float) -> dict:
    workdir = tempfile.mkdtemp(prefix="jaxcnn-speedrun-")
    cmd = [sys.executable, "-m", "jaxcnn.launch", experiment, "--workdir", workdir]
    for s in sets:
        cmd += ["--set", s]
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reached, seen = None, 0
    while True:
        done = proc.poll() is not None
        if os.path.exists(metrics_path):
            with open(metrics_path) as f:
                lines = f.readlines()
            for line in lines[seen:]:
                if not line.endswith("\n"):
                    break  # still being written
                seen += 1
                record = json.loads(line)
                acc = record.get("test_accuracy")
                if reached is None and acc is not None and acc >= target:
                    reached = {"seconds": time.perf_counter() - start, "epoch": record["epoch"],
                               "accuracy": acc}
        if done:
            break
        if time.perf_counter() - start > timeout:
            proc.kill()
            sys.exit(f"{experiment}: no result within --timeout {timeout:.0f} s")
        time.sleep(0.05)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{experiment} failed (exit {proc.returncode}):\n{proc.stderr.read()[-3000:]}")
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    return {"reached": reached, "final_accuracy": summary["final_test_accuracy"],
            "best_accuracy": summary["best_test_accuracy"], "wall": wall,
            "compile": summary.get("compile_seconds"), "images_per_s": summary["train_images_per_sec"],
            "workdir": workdir}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment")
    parser.add_argument("--target", type=float, required=True, help="test accuracy, e.g. 0.91")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each seed")
    parser.add_argument("--seeds", default=None, metavar="S,S,...",
                        help="train with each of these seeds (--set seed=S) instead of the "
                             "experiment's own: a recipe's luck with one seed is not its speed")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    try:
        seeds = [None] if args.seeds is None else [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds takes whole numbers separated by commas, e.g. 0,1,2; got {args.seeds!r}")
    runs = [(seed, r) for seed in seeds for r in range(args.rounds)]
    times = []
    for seed, r in runs:
        sets = args.sets if seed is None else [*args.sets, f"seed={seed}"]
        res = one_run(args.experiment, args.target, sets, args.timeout)
        hit = res["reached"]
        where = (f"reached {hit['accuracy']:.4f} >= {args.target} after {hit['seconds']:.1f} s "
                 f"(epoch {hit['epoch']})" if hit else f"never reached {args.target}")
        label = f"round {r + 1}" if seed is None else f"seed {seed} round {r + 1}"
        print(f"{label}: {where}; final {res['final_accuracy']:.4f}, best "
              f"{res['best_accuracy']:.4f}, whole run {res['wall']:.1f} s wall, compile "
              f"{res['compile']:.1f} s, {res['images_per_s']:,.0f} train img/s ({res['workdir']})",
              flush=True)
        if hit:
            times.append(hit["seconds"])
    if times:
        print(f"{args.experiment}: launch -> test accuracy >= {args.target}: median "
              f"{statistics.median(times):.1f} s [{min(times):.1f}-{max(times):.1f}] over "
              f"{len(times)} of {len(runs)} runs")
    else:
        print(f"{args.experiment}: test accuracy {args.target} not reached in {len(runs)} runs")
        sys.exit(1)


if __name__ == "__main__":
    main()
