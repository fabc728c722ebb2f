"""Runs an experiment: ``python -m jaxcnn.launch EXPERIMENT.py [--workdir DIR] [--set k=v ...]``.

Loads the experiment file's ``config``, applies ``--set`` overrides, prints the resolved config
and calls ``jaxcnn.train.train_and_evaluate(config, workdir)``. Mistakes in the input end with one
paragraph on stderr and exit status 2 (add ``--debug`` for the traceback).
"""

import argparse
import json
import os
import sys
import textwrap

from jaxcnn.errors import UserError

EXIT_USER_ERROR = 2


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m jaxcnn.launch",
        description="Train the experiment defined by a Python file's `config` dict.")
    parser.add_argument("experiment", help="path of the experiment file, e.g. experiments/lenet.py")
    parser.add_argument("--workdir", help="run directory (default: runs/<experiment name>)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set optimizer.learning_rate=0.01 "
                             "(VALUE is a Python literal or a bare word); repeatable")
    parser.add_argument("--restart", action="store_true",
                        help="if the workdir holds an earlier run, move it aside to WORKDIR.old-N "
                             "(it is never deleted) and start afresh")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    return parser.parse_args(argv)


def prepare(args) -> tuple[dict, str]:
    """The resolved config and the workdir for the parsed command line."""
    from jaxcnn import config as config_lib

    config = config_lib.resolve(config_lib.load_experiment(args.experiment), args.sets)
    if config["name"] is None:
        config["name"] = os.path.splitext(os.path.basename(args.experiment))[0]
    workdir = args.workdir or os.path.join("runs", config["name"])
    return config, workdir


def claim_workdir(workdir: str, restart: bool) -> None:
    """Makes sure ``workdir`` can take a new run without overwriting an earlier one."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir!r} is a file, not a directory: choose another path.")
    if os.path.isdir(workdir) and os.listdir(workdir):
        if not restart:
            raise UserError(
                f"The workdir {workdir!r} already holds files of an earlier run. Choose another "
                "--workdir, or pass --restart to move the old run aside (to "
                f"{workdir}.old-N; nothing is deleted).")
        n = 1
        while os.path.exists(f"{workdir}.old-{n}"):
            n += 1
        os.rename(workdir, f"{workdir}.old-{n}")
        print(f"moved the earlier run in {workdir} to {workdir}.old-{n}")
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write-test")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise UserError(
            f"Cannot write to the workdir {workdir!r} ({e.strerror}). Choose a writable "
            "--workdir.") from None


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config, workdir = prepare(args)
        print("config:", json.dumps(config, indent=2))
        import jax

        if jax.process_index() == 0:
            claim_workdir(workdir, args.restart)
        from jaxcnn.train import train_and_evaluate

        train_and_evaluate(config, workdir)
    except UserError as e:
        if args.debug:
            raise
        message = " ".join(str(e).split())
        print(textwrap.fill(f"error: {message}", width=100), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
