"""Experiment configs: the defaults, experiment files, ``--set`` overrides and validation.

An experiment file is plain Python that defines a dict named ``config``. Only the keys that
differ from ``DEFAULTS`` need to be given; ``resolve`` merges them over the defaults and checks
every key, type and value, so a typo fails before any work is done. An experiment can build on
another one with ``extend``, given its own path (``__file__``) and the other file's::

    from jaxcnn.config import extend
    config = extend(__file__, "lenet.py", {"data": {"dataset": "fashion_mnist"}})
"""

import ast
import copy
import math
import os
import runpy
from typing import Any

from jaxcnn import models
from jaxcnn.errors import UserError, did_you_mean
from jaxcnn.optim import OPTIMIZERS, SCHEDULES  # the registries: name -> builder

# Every setting and its default: the one place where defaults live.
DEFAULTS: dict[str, Any] = {
    "name": None,  # run name; None -> the experiment file's name
    "seed": 0,
    "model": {"name": "lenet5"},  # further keys: the model's constructor arguments
    "data": {
        "dataset": "mnist",  # mnist, fashion_mnist, cifar10, cifar100, imagefolder, or a TFDS name
        "data_dir": None,  # a folder with the raw files (IDX / CIFAR pickles), or the image folder
        "pipeline": "auto",  # 'memory': all on the devices; 'stream': read by grain while
        # training; 'auto': memory when the dataset fits memory_budget_gb, else stream
        "image_size": None,  # resize to image_size x image_size (shorter side, centre crop)
        "random_resized_crop": False,  # ImageNet training recipe (stream; needs image_size)
        "num_workers": None,  # stream: decoding worker processes (None: one per spare core)
        "memory_budget_gb": None,  # auto: largest dataset kept in memory (None: 1/4 of RAM)
        "max_train_examples": None,  # use only the first N training examples
        "max_test_examples": None,  # evaluate on only the first N test examples
        "crop_padding": 0,  # augmentation: pad by P pixels and crop randomly back (0 = off)
        "flip": False,  # augmentation: random horizontal flips
    },
    "epochs": 10,
    "batch_size": 128,  # global batch, split over all devices
    "eval_batch_size": 1000,
    "eval_flip": False,  # test-time augmentation: classify each test image by the mean of its
    # own and its mirror image's logits (the test metrics, restore, predict)
    "optimizer": {
        "name": "adam",  # sgd, momentum, nesterov, adam, adamw, rmsprop
        "learning_rate": 1e-3,  # peak learning rate
        "momentum": 0.9,  # momentum / nesterov / rmsprop
        "b1": 0.9,  # adam / adamw
        "b2": 0.999,  # adam / adamw
        "weight_decay": 0.0,  # L2 on kernels; decoupled for adamw
        "grad_clip_norm": None,  # clip gradients to this global norm
    },
    "schedule": {
        "name": "constant",  # constant, cosine, warmup_cosine, step, onecycle
        "warmup_epochs": 0.0,  # warmup_cosine; onecycle's rising phase (0 -> 30% of training)
        "final_factor": 0.0,  # cosine / warmup_cosine end at learning_rate * final_factor
        "boundaries": [],  # step: epochs at which the rate is multiplied by decay_factor
        "decay_factor": 0.1,  # step
    },
    "label_smoothing": 0.0,
    "ema_decay": None,  # evaluate (and restore) the exponential moving average of the weights
    # over the steps, each step's weight (1 - ema_decay) (e.g. 0.998); None: the weights themselves
    "aux_loss_weight": 0.3,  # weight of auxiliary classifiers' losses (GoogLeNet), training only
    "eval_every_epochs": 1,  # evaluate every N epochs (and always after the last)
    "checkpoint": {
        "every_epochs": 1,  # save at the end of every N epochs (and always after the last)
        "every_steps": None,  # also save every N steps inside an epoch (epoch_loop 'step')
        "keep": 3,  # keep the last N checkpoints, plus the best by test accuracy
    },
    "precision": "float32",  # 'bfloat16': compute in bfloat16; parameters, optimizer state,
    # BatchNorm statistics, the loss and checkpoints stay float32
    "epoch_loop": "auto",  # 'step': one jitted call per batch; 'scan': one lax.scan per epoch;
    # 'auto': 'step' on CPU (faster there), 'scan' on GPU/TPU
}

EPOCH_LOOPS = ("auto", "step", "scan")
PRECISIONS = tuple(models.PRECISIONS)
PIPELINES = ("auto", "memory", "stream")

# Settings whose default is None (or an empty list) and so does not show their type.
_TYPES = {
    "name": (str, type(None)),
    "data.data_dir": (str, type(None)),
    "data.max_train_examples": (int, type(None)),
    "data.max_test_examples": (int, type(None)),
    "data.image_size": (int, type(None)),
    "data.num_workers": (int, type(None)),
    "data.memory_budget_gb": (float, int, type(None)),
    "optimizer.grad_clip_norm": (float, int, type(None)),
    "ema_decay": (float, type(None)),
    "checkpoint.every_steps": (int, type(None)),
    "schedule.boundaries": (list, tuple),
}


def resolve(overrides: dict, sets: list[str] = ()) -> dict:
    """Merges an experiment's ``config`` and ``--set`` strings over DEFAULTS and validates it."""
    if not isinstance(overrides, dict):
        raise UserError(f"`config` must be a dict, got {type(overrides).__name__}.")
    config = merge(DEFAULTS, overrides, check=True)
    for item in sets:
        path, value = parse_set(item)
        config = merge(config, _nest(path, value), check=True)
    validate(config)
    _expand_paths(config)
    return config


def merge(base: dict, overrides: dict, check: bool = False, _prefix: str = "") -> dict:
    """A deep copy of ``base`` with ``overrides`` merged in, dict by dict.

    With ``check``, a key that ``base`` lacks is a UserError naming the nearest valid key,
    except under ``model`` (its keys are the chosen model's arguments, checked when it is built).
    """
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        path = _prefix + str(key)
        if check and key not in base and _prefix != "model.":
            valid = ", ".join(sorted(base))
            raise UserError(
                f"Unknown config key {path!r}.{did_you_mean(key, base)} "
                f"Valid keys{' under ' + _prefix[:-1] if _prefix else ''}: {valid}.")
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, check, path + ".")
        else:
            out[key] = copy.deepcopy(value)
    return out


def with_later_defaults(saved: dict) -> dict:
    """A run's saved config.json with the settings added to DEFAULTS since it was written, at
    their defaults: what that run trained with, so a later version resumes it."""
    return merge(DEFAULTS, saved) if isinstance(saved, dict) else saved


def validate(config: dict) -> None:
    """Checks types and values; raises UserError with the first problem found."""
    _check_types(config, DEFAULTS, "")
    _choice(config["optimizer"]["name"], OPTIMIZERS, "optimizer.name")
    _choice(config["schedule"]["name"], SCHEDULES, "schedule.name")
    _choice(config["epoch_loop"], EPOCH_LOOPS, "epoch_loop")
    _choice(config["data"]["pipeline"], PIPELINES, "data.pipeline")
    _choice(config["precision"], PRECISIONS, "precision")
    models.check_config(config["model"])  # the name, its settings and the model's own checks
    positive = {
        "epochs": config["epochs"],
        "batch_size": config["batch_size"],
        "eval_batch_size": config["eval_batch_size"],
        "eval_every_epochs": config["eval_every_epochs"],
        "optimizer.learning_rate": config["optimizer"]["learning_rate"],
        "checkpoint.every_epochs": config["checkpoint"]["every_epochs"],
        "checkpoint.keep": config["checkpoint"]["keep"],
    }
    if config["checkpoint"]["every_steps"] is not None:
        positive["checkpoint.every_steps"] = config["checkpoint"]["every_steps"]
    for key in ("max_train_examples", "max_test_examples", "image_size", "memory_budget_gb"):
        if config["data"][key] is not None:
            positive["data." + key] = config["data"][key]
    if config["optimizer"]["grad_clip_norm"] is not None:
        positive["optimizer.grad_clip_norm"] = config["optimizer"]["grad_clip_norm"]
    for key, value in positive.items():
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise UserError(f"{key} must be a finite number above 0, got {value!r}.")
    for key, value in (("label_smoothing", config["label_smoothing"]),):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise UserError(f"{key} must be a number in [0, 1), got {value!r}.")
    if config["ema_decay"] is not None and not 0 < config["ema_decay"] < 1:
        raise UserError(f"ema_decay must be a number in (0, 1), e.g. 0.998, or None (no average), "
                        f"got {config['ema_decay']!r}.")
    for key in ("momentum", "b1", "b2"):
        if not 0 <= config["optimizer"][key] < 1:
            raise UserError(f"optimizer.{key} must be in [0, 1), got {config['optimizer'][key]!r}.")
    for key, value in (("optimizer.weight_decay", config["optimizer"]["weight_decay"]),
                       ("aux_loss_weight", config["aux_loss_weight"]),
                       ("data.crop_padding", config["data"]["crop_padding"]),
                       ("data.num_workers", config["data"]["num_workers"] or 0),
                       ("schedule.warmup_epochs", config["schedule"]["warmup_epochs"]),
                       ("schedule.final_factor", config["schedule"]["final_factor"]),
                       ("schedule.decay_factor", config["schedule"]["decay_factor"])):
        if value < 0:
            raise UserError(f"{key} must not be negative, got {value!r}.")
    if config["schedule"]["warmup_epochs"] >= config["epochs"]:
        raise UserError(
            f"schedule.warmup_epochs ({config['schedule']['warmup_epochs']}) must be shorter "
            f"than the run (epochs = {config['epochs']}).")
    if config["data"]["data_dir"] is not None and not config["data"]["data_dir"].strip():
        raise UserError(
            "data.data_dir is empty: give the folder that holds the data, e.g. --set "
            "data.data_dir=/data/mnist, or None to let jaxcnn find the dataset itself.")
    if config["data"]["random_resized_crop"] and not config["data"]["image_size"]:
        raise UserError(
            "data.random_resized_crop needs data.image_size, the size of the crops, e.g. --set "
            "data.image_size=224.")
    for b in config["schedule"]["boundaries"]:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or b <= 0:
            raise UserError(f"schedule.boundaries must be epochs above 0, got {b!r}.")


# Words a user may type for a boolean; --set takes Python literals, so they arrive as strings.
_BOOL_WORDS = {"true": "True", "false": "False", "yes": "True", "no": "False", "on": "True",
               "off": "False"}


def _check_types(config: dict, defaults: dict, prefix: str) -> None:
    for key, default in defaults.items():
        path = prefix + key
        value = config[key]
        if path == "model":
            continue  # the model's own arguments are checked against its Module when built
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise UserError(f"{path} must be a dict of settings, got {value!r}.")
            _check_types(value, default, path + ".")
            continue
        types = _TYPES.get(path) or ((float, int) if isinstance(default, float) else (type(default),))
        wrong_bool = isinstance(value, bool) and bool not in types
        if wrong_bool or not isinstance(value, types):
            names = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            hint = ""
            word = _BOOL_WORDS.get(value.lower()) if isinstance(value, str) else None
            if bool in types and word:
                hint = (f" Write Python's {word} (capitalised): {path}={word} with --set, "
                        f"or {word} in the experiment file.")
            raise UserError(
                f"{path} must be of type {names}, got {value!r} ({type(value).__name__}).{hint}")


def _choice(value, choices, key) -> None:
    if value not in choices:
        raise UserError(
            f"Unknown {key} {value!r}.{did_you_mean(value, choices)} "
            f"Valid values: {', '.join(choices)}.")


# A value that opens like a list, tuple, dict or quoted string is meant as a literal: one that does
# not parse is a typo to report, not a string to take.
_LITERAL_OPENERS = "[({'\""

# Settings that name a folder: a leading ``~`` is expanded when the config is resolved, so
# config.json, run.json and every message show the folder that is read.
PATH_SETTINGS = ("data.data_dir",)


def parse_set(item: str) -> tuple[list[str], Any]:
    """Parses one ``--set key.path=VALUE``. VALUE is a Python literal (ast.literal_eval, never
    evaluated as code); any other text, such as ``fashion_mnist`` or a path like
    ``/data/mnist``, ``./mnist`` or ``~/mnist``, is taken as that string. A KEY that is not a
    dotted name, a missing VALUE and a broken list, tuple, dict or quoted string are refused."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or not all(part.isidentifier() for part in key.split(".")):
        raise UserError(
            f"Malformed --set {item!r}: expected KEY=VALUE with a dotted key, "
            "e.g. --set optimizer.learning_rate=0.01 or --set data.dataset=fashion_mnist.")
    text = text.strip()
    if not text:
        raise UserError(
            f"Malformed --set {item!r}: no value after '='. Give a value, e.g. --set {key}=None "
            f"or, for an empty string, --set \"{key}=''\".")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        if text[0] in _LITERAL_OPENERS:
            raise UserError(
                f"Malformed --set {item!r}: {text!r} is not a Python literal. Use a number, "
                "True/False/None, a quoted string, or a list/tuple/dict of those, "
                "e.g. --set model.cdims=[32,64].") from None
        value = text  # a word or a path: the text itself, never evaluated
    if isinstance(value, tuple):
        value = list(value)
    return key.split("."), value


def _expand_paths(config: dict) -> None:
    """Expands a leading ``~`` in the folder settings (PATH_SETTINGS), in place."""
    for path in PATH_SETTINGS:
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        if isinstance(node.get(last), str):
            node[last] = os.path.expanduser(node[last])


def _nest(path: list[str], value) -> dict:
    for key in reversed(path):
        value = {key: value}
    return value


def load_experiment(path: str) -> dict:
    """Runs an experiment file and returns its ``config`` dict (not yet resolved).

    Experiment files are Python and run as code: run only files you trust.
    """
    if not os.path.isfile(path):
        hint = " It is a directory." if os.path.isdir(path) else ""
        raise UserError(
            f"Experiment file {path!r} not found.{hint} Pass the path of a .py file that defines "
            "a dict named `config`, e.g. experiments/lenet.py.")
    try:
        namespace = runpy.run_path(path, run_name="__experiment__")
    except SyntaxError as e:
        raise UserError(
            f"Syntax error in experiment file {e.filename}:{e.lineno}: {e.msg}.") from None
    except UserError:
        raise
    except Exception as e:  # the file's own code failed
        tb = e.__traceback__
        line = None
        while tb is not None:
            if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
                line = tb.tb_lineno
            tb = tb.tb_next
        where = f"{path}:{line}" if line else path
        raise UserError(
            f"Experiment file {where} raised {type(e).__name__}: {e}. Fix the file "
            "(run with --debug for the full traceback).") from e
    if "config" not in namespace:
        raise UserError(
            f"Experiment file {path!r} does not define `config`. It must assign a dict, "
            "e.g. config = {'model': {'name': 'lenet5'}, 'epochs': 5}.")
    if not isinstance(namespace["config"], dict):
        raise UserError(
            f"`config` in {path!r} must be a dict, got {type(namespace['config']).__name__}.")
    return namespace["config"]


def extend(here: str, base_file: str, overrides: dict) -> dict:
    """``config`` of the experiment file ``base_file`` with ``overrides`` merged in (dict by dict).

    ``here`` is the calling experiment's own path, ``__file__``: a relative ``base_file`` is
    taken relative to its folder, e.g. ``config = extend(__file__, "cnn.py", {"epochs": 20})``.
    """
    base = load_experiment(os.path.join(os.path.dirname(os.path.abspath(here)), base_file))
    base.pop("name", None)  # a derived experiment is named after its own file
    return merge(base, overrides)
