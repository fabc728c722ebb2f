"""A per-layer summary of a model: output shapes, parameters, FLOPs and the output-size
arithmetic of every convolution and pooling layer.

    python -m jaxcnn.summary MODEL_OR_EXPERIMENT [--input H,W,C] [--num-classes N] [--set key=value ...]

MODEL_OR_EXPERIMENT is a registered model name (``resnet20``) or an experiment file
(``experiments/resnet20_cifar10.py``: its model, dataset shape and class count). ``--set`` passes
constructor arguments (``--set small_input=True``; ``model.`` in front is accepted too). The same
table comes from ``summary_table(model, (H, W, C))``, and the trainer writes it into each run.

Columns: the layer's path (``layer1_0/conv1``) and type, output shape (H x W x C, without the
batch), parameters, FLOPs, and for convolutions and pools ``floor((H + 2P - K)/S) + 1`` with the
layer's own numbers (``ceil`` for ceil-mode pools), for one image in evaluation mode. A legend
above the table says which number is which. The command line also prints a hint when a model with
a small-input option (``small_input``) is given images much smaller than it was designed for, or
its maps shrink to 1×1 before the head (``resnet18 --input 32,32,3``).

What Flax gives: the rows are the leaf module calls of Flax's own table (the one behind
``nn.tabulate``), in call order, with their paths, output shapes and variables. What jaxcnn adds,
from one abstract trace of the forward pass (``jax.make_jaxpr``, shapes only):

- FLOPs: 2 per multiply-accumulate in convolutions and dense layers, one per element and operation
  for element-wise arithmetic (bias, BatchNorm, ReLU, residual additions), one per input element
  of a pooling window. FLOPs outside every row (activations and residual additions between
  layers) are in the total and reported apart, as are the multiply-accumulates that papers and
  torchvision often quote as "FLOPs" (ResNet-50: 4.1 G). Flax's ``compute_flops`` (XLA's cost
  analysis) is not used: it skips a convolution's padding taps and counts no multiply-accumulates
  (LeNet-5: 831,066 FLOPs, against 852,370 counted here). A module whose computation is not its
  cost (LeNet-5's C3 runs its sparse connections as a dense convolution with zero weights) defines
  ``summary_cost(input_shape, output_shape) -> (FLOPs, multiply-accumulates)`` for one image;
  a model that computes its layers in another form (LeNet-5's banded matrix products on a CPU)
  defines ``layer_view()``, the same network layer by layer, which the table is made from
  (``models.layer_view``).
- the output-size arithmetic, read off each convolution and pooling operation;
- rows for poolings done by plain functions (``jaxcnn.models.layers.max_pool``, ``nn.max_pool``),
  which Flax's table cannot show: they have no module, and are named after the function;
- the split of parameters: the ``params`` collection is trainable, other collections such as
  LeNet-5's fixed RBF prototypes are not, and BatchNorm running statistics are state, listed on a
  line of their own. Modules that evaluation does not call (GoogLeNet's auxiliary heads) get one
  "training only" row each.
"""

import argparse
import dataclasses
import os
import re
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.linen import summary as flax_summary

from jaxcnn.errors import UserError
from jaxcnn.models import layer_view
from jaxcnn.models.layers import AdaptiveAvgPool

STATS_COLLECTIONS = ("batch_stats",)  # state, not parameters

# Element-wise primitives: one FLOP per output element.
_ELEMENTWISE = frozenset("""
add sub mul div neg max min abs sign exp exp2 log log1p tanh logistic rsqrt sqrt cbrt pow
integer_pow square erf erf_inv sin cos tan atan2 floor ceil round rem nextafter
""".split())
_REDUCE = frozenset(("reduce_max", "reduce_min", "reduce_sum", "reduce_prod"))
_REDUCE_WINDOW = frozenset(("reduce_window_max", "reduce_window_min", "reduce_window_sum", "reduce_window"))


@dataclasses.dataclass
class Row:
    """One line of the table: a leaf module, a pooling function or a training-only module."""

    name: str
    kind: str
    output_shape: tuple = ()
    params: int = 0
    trainable: int = 0
    flops: int = 0
    macs: int = 0
    arithmetic: str = ""


@dataclasses.dataclass
class Summary:
    """The summary's numbers; ``str(summary)`` is the table."""

    model: str
    input_shape: tuple
    rows: list
    total_params: int
    trainable_params: int
    non_trainable_params: int
    state_count: int  # BatchNorm running statistics
    total_flops: int
    total_macs: int
    other_flops: int  # FLOPs outside the rows (activations, residual additions, ...)

    def __str__(self) -> str:
        return _format(self)


def summarize(model: nn.Module, input_shape) -> Summary:
    """Traces ``model`` on one image of ``input_shape`` (H, W, C) and returns its Summary."""
    model = layer_view(model)
    input_shape = tuple(int(d) for d in input_shape)
    x, key = jnp.zeros((1, *input_shape), jnp.float32), jax.random.key(0)
    # The table behind nn.tabulate (which returns only text): every module call of an
    # initialisation, in call order, with its inputs, outputs and own variables.
    table = flax_summary._get_module_table(model, depth=None, show_repeated=False, compute_flops=False,
                                           compute_vjp_flops=False)(key, x, train=False)
    variables = jax.eval_shape(lambda: model.init(key, x, train=False))
    called = set()  # module paths that evaluation calls

    def record(next_fun, args, kwargs, context):
        called.add(context.module.path)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x).jaxpr

    parents = {p[:n] for p in called for n in range(len(p))}
    leaves = {r.path: (i, r) for i, r in enumerate(table) if r.path in called and r.path not in parents}
    by_path, unused = {}, {}  # rows of leaf modules; training-only rows
    for r in table:
        counts = {c: n for c, (n, _) in r.size_and_bytes(table.collections).items()
                  if c not in STATS_COLLECTIONS}
        if r.path in leaves:
            shape, kind = getattr(r.outputs, "shape", ())[1:], type(r.module_copy).__name__
            by_path[r.path] = Row("/".join(r.path) or kind, kind, shape, sum(counts.values()),
                                  counts.get("params", 0))
            if isinstance(r.module_copy, AdaptiveAvgPool) and len(shape) == 3:
                h, w = _in_shape(r)[1:3]
                by_path[r.path].arithmetic = f"adaptive: {h}×{w} → {shape[0]}×{shape[1]}"
        elif r.path not in called and sum(counts.values()):  # GoogLeNet's auxiliary heads
            top = next(r.path[:n] for n in range(1, len(r.path) + 1) if r.path[:n] not in called)
            entry = unused.setdefault(top, Row("/".join(top), "training only"))
            entry.params += sum(counts.values())
            entry.trainable += counts.get("params", 0)

    ordered = [((i, 0), by_path[p]) for p, (i, _) in leaves.items()]
    last, other, pools = -1, 0, {}

    def visit(eqn, scope, producers):
        nonlocal last, other
        # The innermost module that runs the operation.
        owner = next(scope[:n] for n in range(len(scope), -1, -1) if scope[:n] in called or n == 0)
        flops, macs = _cost(eqn)
        window = _window(eqn, producers)
        if owner in leaves:
            last, flax_row = leaves[owner]
            row = by_path[owner]
            row.flops += flops
            row.macs += macs
            if window and not row.arithmetic:
                row.arithmetic = _arithmetic(window[1], flax_row.module_copy)
        elif window and window[0] != "conv":  # a pooling function outside any leaf module
            kind, dims, out = window
            pools[kind] = pools.get(kind, 0) + 1
            row = Row("/".join(owner + (f"{kind}_{pools[kind]}",)), kind, tuple(out[1:]), flops=flops,
                      macs=macs, arithmetic=_arithmetic(dims))
            ordered.append(((last, 1, len(ordered)), row))  # after the last leaf module run
        else:
            other += flops

    _walk(jaxpr, (), visit, model.name or type(model).__name__)
    for path, (_, r) in leaves.items():
        if hasattr(r.module_copy, "summary_cost") and by_path[path].output_shape:
            cost = r.module_copy.summary_cost(_in_shape(r)[1:], by_path[path].output_shape)
            by_path[path].flops, by_path[path].macs = cost
    rows = [row for _, row in sorted(ordered, key=lambda entry: entry[0])] + list(unused.values())

    trainable = _count(variables.get("params", {}))
    non_trainable = sum(_count(v) for k, v in variables.items() if k != "params" and k not in STATS_COLLECTIONS)
    total_flops = sum(r.flops for r in rows) + other
    return Summary(
        model=type(model).__name__, input_shape=input_shape, rows=rows,
        total_params=trainable + non_trainable, trainable_params=trainable,
        non_trainable_params=non_trainable,
        state_count=sum(_count(variables.get(k, {})) for k in STATS_COLLECTIONS),
        total_flops=total_flops, total_macs=sum(r.macs for r in rows), other_flops=other)


def summary_table(model: nn.Module, input_shape) -> str:
    """The summary of ``model`` on images of ``input_shape`` (H, W, C), as text."""
    return str(summarize(model, input_shape))


# -- FLOPs and windows, from the traced operations -------------------------------------------------

def _walk(jaxpr, outer_scope, visit, root_name, producers=None):
    """Calls ``visit(eqn, module path, producers)`` for every operation, inside nested jaxprs too;
    ``producers`` maps a variable's id to the operation that computed it."""
    producers = producers or {}
    for eqn in jaxpr.eqns:
        stack = tuple(s for s in str(eqn.source_info.name_stack).split("/") if s)
        if not outer_scope and stack and stack[0] == root_name:
            stack = stack[1:]
        scope = outer_scope + stack
        subs = [s for v in eqn.params.values() for s in (v if isinstance(v, (list, tuple)) else (v,))
                if hasattr(getattr(s, "jaxpr", s), "eqns")]
        if subs and eqn.primitive.name not in ("conv_general_dilated", "dot_general"):
            for sub in (getattr(s, "jaxpr", s) for s in subs):
                # A sub-jaxpr's inputs are the operation's own (where their numbers agree).
                pairs = zip(sub.invars, eqn.invars) if len(sub.invars) == len(eqn.invars) else ()
                inner = {**producers, **{id(i): producers.get(id(o)) for i, o in pairs}}
                _walk(sub, scope, visit, root_name, inner)
        else:
            visit(eqn, scope, producers)
        for v in eqn.outvars:
            producers[id(v)] = eqn


def _size(shape) -> int:
    return int(np.prod(shape)) if shape else 1


def _count(tree) -> int:
    return sum(_size(x.shape) for x in jax.tree.leaves(tree))


def _in_shape(row) -> tuple:
    """The shape of the first array a Flax table row's module was called with."""
    return next(a.shape for a in jax.tree.leaves(row.inputs) if hasattr(a, "shape"))


def _cost(eqn) -> tuple[int, int]:
    """(FLOPs, multiply-accumulates) of one primitive."""
    name = eqn.primitive.name
    out = eqn.outvars[0].aval.shape if eqn.outvars else ()
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
        macs = _size(out) * rhs[spec[1]] * _size([rhs[d] for d in spec[2:]])
        return 2 * macs, macs
    if name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        macs = _size(out) * _size([eqn.invars[0].aval.shape[d] for d in contract])
        return 2 * macs, macs
    if name in _REDUCE_WINDOW:
        return _size(out) * _size(eqn.params["window_dimensions"]), 0
    if name in _REDUCE:
        return _size(eqn.invars[0].aval.shape), 0
    return (_size(out) if name in _ELEMENTWISE else 0), 0


def _window(eqn, producers):
    """(kind, dims, output shape) of a convolution or pooling operation, else None; ``dims`` holds
    (size, kernel, stride, (low, high) padding, dilation, output size) per spatial dimension."""
    if not eqn.invars or not eqn.outvars:
        return None
    name, p = eqn.primitive.name, eqn.params
    shape, out = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
    if name == "conv_general_dilated":
        dn, kernel = p["dimension_numbers"], eqn.invars[1].aval.shape
        return "conv", list(zip([shape[d] for d in dn.lhs_spec[2:]], [kernel[d] for d in dn.rhs_spec[2:]],
                                p["window_strides"], p["padding"], p["rhs_dilation"],
                                [out[d] for d in dn.out_spec[2:]])), out
    kind = "avg_pool" if "sum" in name else "max_pool"
    if name in _REDUCE_WINDOW and len(out) == 4:  # nn.max_pool, nn.avg_pool
        return kind, [(shape[d], p["window_dimensions"][d], p["window_strides"][d], p["padding"][d],
                       p["window_dilation"][d], out[d]) for d in (1, 2)], out
    if name in ("reduce_max", "reduce_sum") and len(shape) == 6 and tuple(p["axes"]) == (2, 4):
        # jaxcnn's own pools (layers.max_pool, LeNet-5's subsampling) reduce their input cut to
        # whole windows and reshaped to [N, Ho, K, Wo, K, C].
        size = (shape[1] * shape[2], shape[3] * shape[4])
        reshape = producers.get(id(eqn.invars[0]))
        cut = reshape and reshape.primitive.name == "reshape" and producers.get(id(reshape.invars[0]))
        if cut and cut.primitive.name == "slice":
            size = cut.invars[0].aval.shape[1:3]
        windows = (shape[2], shape[4])
        return kind, [(size[i], windows[i], windows[i], (0, 0), 1, out[i + 1]) for i in (0, 1)], out
    return None


def _arithmetic(dims, module=None) -> str:
    """'⌊(28 + 2·2 − 5)/1⌋ + 1 = 28' for each spatial dimension (once when they agree)."""
    ceil = bool(getattr(module, "ceil_mode", False))  # jaxcnn's MaxPool: PyTorch's ceil mode
    texts = []
    for size, kernel, stride, (lo, hi), dilation, out in dims:
        if ceil:
            lo = hi = module.padding
        pad = f"2·{lo}" if lo == hi else f"{lo} + {hi}"
        span = f"{dilation}·({kernel} − 1) − 1" if dilation > 1 else f"{kernel}"
        inner = f"({size} + {pad} − {span})/{stride}"
        text = f"⌈{inner}⌉ + 1" if ceil else f"⌊{inner}⌋ + 1"
        if ceil and -(-(size + 2 * lo - kernel) // stride) + 1 != out:
            text += " − 1"  # PyTorch: the last window may not start inside the right padding
        texts.append(f"{text} = {out}")
    if len(texts) == 2:
        return texts[0] if texts[0] == texts[1] else f"H: {texts[0]}; W: {texts[1]}"
    return "; ".join(texts)


# -- formatting ------------------------------------------------------------------------------------

def _shape_text(shape) -> str:
    return "×".join(str(d) for d in shape)


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(int(n))


def _format(s: Summary) -> str:
    header = ("Layer (type)", "Output shape", "Param #", "FLOPs", "Output size")
    body = [("input", _shape_text(s.input_shape), "", "", "")]
    for r in s.rows:
        kind = r.kind if r.trainable == r.params else f"{r.kind}, not trainable"
        body.append((f"{r.name} ({kind})", _shape_text(r.output_shape), f"{r.params:,}",
                     f"{r.flops:,}", r.arithmetic))
    widths = [max(len(row[i]) for row in [header] + body) for i in range(4)]

    def line(row):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]),
                 row[3].rjust(widths[3]), row[4]]
        return "  ".join(cells).rstrip()

    rule_width = max(len(line(r)) for r in [header] + body)
    out = [f"Model: {s.model}, input {_shape_text(s.input_shape)} (one image, evaluation mode)"]
    out += _legend([r.arithmetic for r in s.rows])
    out += ["=" * rule_width, line(header), "=" * rule_width]
    out += [line(r) for r in body]
    out += ["=" * rule_width,
            f"Total params: {s.total_params:,}",
            f"Trainable params: {s.trainable_params:,}",
            f"Non-trainable params: {s.non_trainable_params:,}"]
    if s.state_count:
        out.append(f"BatchNorm running statistics (state, not parameters): {s.state_count:,}")
    out.append(f"Total FLOPs: {s.total_flops:,} ({_human(s.total_flops)}; "
               f"{_human(s.total_macs)} multiply-accumulates in convolutions and dense layers; "
               f"{s.other_flops:,} FLOPs in activations and additions outside the rows)")
    out.append("-" * rule_width)
    return "\n".join(out) + "\n"


def _legend(arithmetic: list[str]) -> list[str]:
    """The lines that say what the numbers of the "Output size" column are (none if it is empty)."""
    texts = [t for t in arithmetic if t and not t.startswith("adaptive")]
    if not texts:
        return []
    lines = ["Output size: ⌊(H + 2P − K)/S⌋ + 1, with H the input size, P the padding (each side), "
             "K the kernel, S the stride"]
    if any(re.search(r"\(\d+ \+ \d+ \+ \d+ −", t) for t in texts):
        lines.append("  (H + P1 + P2 − K): uneven padding, P1 before and P2 after")
    if any("·(" in t for t in texts):
        lines.append("  − D·(K − 1) − 1 in place of − K: a kernel of size K dilated by D")
    if any("⌈" in t for t in texts):
        lines.append("  ⌈…⌉: a ceil-mode pooling (PyTorch's ceil_mode; \"− 1\" where its last window "
                     "would start in the padding)")
    return lines


def size_hint(name: str, model: nn.Module, summary: "Summary", experiment: bool,
              classes_given: bool) -> list[str]:
    """Hint lines when ``model`` (registered as ``name``) is given images much smaller than it was
    designed for, or its maps shrink to 1×1 before the head, and it has a small-input option that
    is off; none otherwise."""
    from jaxcnn import models

    if name not in models.MODELS or "small_input" not in models.model_options(name) \
            or getattr(model, "small_input", True):
        return []
    (nh, nw, _), native_classes = models.native_input(name)
    h, w, c = summary.input_shape
    collapsed = next((r for r in summary.rows if len(r.output_shape) == 3
                      and r.output_shape[:2] == (1, 1) and r.arithmetic
                      and not r.arithmetic.startswith("adaptive")), None)
    if collapsed is None and 2 * h > nh and 2 * w > nw:
        return []
    text = f"hint: {name} was designed for {nh}×{nw} images"
    if collapsed is not None:
        text += f"; on {h}×{w} its maps shrink to 1×1 at {collapsed.name}, before the head"
    else:
        text += f", much larger than {h}×{w}"
    if experiment:
        return [text + f". For {h}×{w} images set model.small_input=True in the experiment "
                "(its small-input stem; here: --set small_input=True)."]
    command = f"python -m jaxcnn.summary {name} --input {h},{w},{c}"
    if not classes_given and native_classes == 1000:
        text += (f". For {h}×{w} images try its small-input stem, with your data set's class "
                 "count (e.g. 10):")
        command += " --num-classes 10"
    else:
        text += f". For {h}×{w} images try its small-input stem:"
    return [text, f"  {command} --set small_input=True"]


# -- command line ----------------------------------------------------------------------------------

DATASET_SHAPES = {"mnist": ((28, 28, 1), 10), "fashion_mnist": ((28, 28, 1), 10),
                  "cifar10": ((32, 32, 3), 10), "cifar100": ((32, 32, 3), 100)}


def _parse_input(text: str) -> tuple:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"--input must be H,W,C with three positive integers, e.g. 32,32,3; got {text!r}.")
    return shape


def build(target: str, input_text: str | None = None, num_classes: int | None = None,
          sets: list[str] = ()) -> tuple[nn.Module, tuple, str]:
    """(model, input shape, name) for a model name or experiment file and the CLI options."""
    from jaxcnn import config as config_lib
    from jaxcnn import models

    kwargs = {}
    for item in sets:
        path, value = config_lib.parse_set(item)
        if path[0] == "model" and len(path) > 1:
            path = path[1:]
        if len(path) != 1:
            raise UserError(f"--set {item!r}: give a constructor argument, e.g. --set small_input=True.")
        kwargs[path[0]] = value
    if target.endswith(".py") or os.path.isfile(target):
        config = config_lib.resolve(config_lib.load_experiment(target))
        model_config = {**config["model"], **kwargs}
        dataset = config["data"]["dataset"]
        known = DATASET_SHAPES.get(dataset)
        if known is None and (input_text is None or num_classes is None):
            raise UserError(f"The input shape and class count of dataset {dataset!r} are not known "
                            "here: give --input H,W,C and --num-classes N.")
        shape = _parse_input(input_text) if input_text else known[0]
        classes = num_classes or known[1]
        label = f"{model_config['name']} ({os.path.basename(target)})"
    else:
        model_config = {"name": target, **kwargs}
        models.check_config(model_config)  # a UserError for an unknown name, before native_input
        native_shape, native_classes = models.native_input(model_config["name"])
        shape = _parse_input(input_text) if input_text else native_shape
        classes = num_classes or native_classes
        label = model_config["name"]
    return models.from_config(model_config, classes), shape, label


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcnn.summary",
        description="Print a model's layers: output shapes, parameters, FLOPs and the output-size "
                    "arithmetic of every convolution and pooling layer.")
    parser.add_argument("target", metavar="MODEL_OR_EXPERIMENT",
                        help="a model name (e.g. resnet20) or an experiment file")
    parser.add_argument("--input", metavar="H,W,C",
                        help="image shape (default: the model's native input, or the experiment's dataset)")
    parser.add_argument("--num-classes", type=int, metavar="N", help="number of classes")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a constructor argument, e.g. --set small_input=True; repeatable")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.num_classes is not None and args.num_classes < 1:
            raise UserError(f"--num-classes must be at least 1, got {args.num_classes}.")
        model, shape, label = build(args.target, args.input, args.num_classes, args.sets)
        summary = summarize(model, shape)
        text = str(summary)
    except UserError as e:
        if args.debug:
            raise
        print(textwrap.fill("error: " + " ".join(str(e).split()), width=100), file=sys.stderr)
        return 2
    print(text.replace(f"Model: {type(model).__name__}", f"Model: {label}", 1), end="")
    hint = size_hint(label.split(" ")[0], model, summary, label != args.target,
                     args.num_classes is not None)
    for i, line in enumerate(hint):
        print(textwrap.fill(line, width=100, break_on_hyphens=False) if i == 0 else line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
