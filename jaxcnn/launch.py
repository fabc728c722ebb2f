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

from jaxcnn.errors import RunStopped, UserError

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
                             "(it is never deleted) and start afresh; without it, a run of the "
                             "same config is resumed and one of another config is refused")
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


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    created, workdir = False, None
    try:
        config, workdir = prepare(args)
        print("config:", json.dumps(config, indent=2))
        import jax

        from jaxcnn import rundir
        from jaxcnn.train import train_and_evaluate

        created = not os.path.exists(workdir)
        if jax.process_index() == 0 and rundir.claim(workdir, config, args.restart):
            print(f"resuming the run in {workdir}")
        train_and_evaluate(config, workdir)
    except UserError as e:
        if created and os.path.isdir(workdir) and not os.listdir(workdir):
            os.rmdir(workdir)  # made by this command and still empty: leave no trace
        if args.debug:
            raise
        _paragraph(f"error: {e}")
        return EXIT_USER_ERROR
    except RunStopped as e:
        _paragraph(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _paragraph(text: str) -> None:
    print(textwrap.fill(" ".join(text.split()), width=100, break_on_hyphens=False,
                        break_long_words=False), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
