"""A per-layer summary of a model: output shapes, parameters, FLOPs and the output-size
arithmetic of every convolution and pooling layer.

    python -m jaxcnn.summary MODEL_OR_EXPERIMENT [--input H,W,C] [--num-classes N] [--set key=value ...]

MODEL_OR_EXPERIMENT is a registered model name (``resnet20``) or an experiment file
(``experiments/resnet20_cifar10.py``: its model, dataset shape and class count). ``--set`` passes
constructor arguments (``--set small_input=True``; ``model.`` in front is accepted too). The same
table comes from ``summary_table(model, (H, W, C))``, and the trainer writes it into each run.

How it is computed: the model is traced once, abstractly (``jax.make_jaxpr`` on shapes only, no
weights are created), for one image in evaluation mode. A row is

- a leaf Flax module call (Conv, Dense, BatchNorm, a pooling module, ...), in call order, named by
  its path (``layer1_0/conv1``), with the variables it owns and the operations it runs; or
- a pooling done by a plain function outside any leaf module (``jaxcnn.models.layers.max_pool``,
  ``nn.max_pool``), named after the function.

A module whose computation is not its cost (LeNet-5's C3 runs its sparse connections as a dense
convolution with zero weights) defines ``summary_cost(input_shape, output_shape) -> (FLOPs,
multiply-accumulates)`` for one image, and its row uses that instead.

Columns: output shape (H x W x C, without the batch), parameters, FLOPs, and for convolutions and
pools ``floor((H + 2P - K)/S) + 1`` with the layer's own numbers (``ceil`` for ceil-mode pools).

Counts: parameters are the ``params`` collection (trainable) plus other variable collections such
as LeNet-5's fixed RBF prototypes (non-trainable); BatchNorm running statistics are state, not
parameters, and are listed on a line of their own. FLOPs are those of one image's forward pass in
evaluation mode, read off the traced operations: 2 per multiply-accumulate in convolutions and
dense layers, one per element and operation for element-wise arithmetic (bias, BatchNorm, ReLU,
residual additions), one per input element of a pooling window. FLOPs outside every row
(activations and residual additions between layers) are in the total and reported apart. Papers
and torchvision often quote multiply-accumulates ("FLOPs" of ResNet-50: 4.1 G): the total line
gives those too.
"""

import argparse
import dataclasses
import os
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError

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
    input_shape = tuple(int(d) for d in input_shape)
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)

    calls = []  # [path, module, input shape, output shape] in call order

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        record = [tuple(context.module.scope.path), context.module,
                  getattr(args[0], "shape", None) if args else None, None]
        calls.append(record)
        out = next_fun(*args, **kwargs)
        record[3] = out.shape if hasattr(out, "shape") else None
        return out

    with nn.intercept_methods(interceptor):
        closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)

    paths = {c[0] for c in calls}
    leaves = [c for c in calls if not any(len(p) > len(c[0]) and p[:len(c[0])] == c[0] for p in paths)]
    leaf_index = {c[0]: i for i, c in enumerate(leaves)}
    root_name = model.name or type(model).__name__

    leaf_rows = [_module_row(c, variables) for c in leaves]
    order, functional, other = [], [], [0]
    seen = set()
    counters = {}

    def owner_of(scope):
        for n in range(len(scope), -1, -1):
            if scope[:n] in paths:
                return scope[:n]
        return ()

    def visit(eqn, scope, producers):
        owner = owner_of(scope)
        flops, macs = _cost(eqn)
        info = _layer_info(eqn, producers)
        if owner in leaf_index:
            row = leaf_rows[leaf_index[owner]]
            row.flops += flops
            row.macs += macs
            if info and not row.arithmetic:
                row.arithmetic = _arithmetic(info, leaves[leaf_index[owner]][1])
            if owner not in seen:
                seen.add(owner)
                order.append(("leaf", leaf_index[owner]))
        elif info and info["kind"] in ("max_pool", "avg_pool"):
            counters[info["kind"]] = counters.get(info["kind"], 0) + 1
            name = "/".join(owner + (f"{info['kind']}_{counters[info['kind']]}",))
            functional.append(Row(name, info["kind"], tuple(info["out"][1:]), flops=flops, macs=macs,
                                  arithmetic=_arithmetic(info, None)))
            order.append(("functional", len(functional) - 1))
        else:
            other[0] += flops

    _walk(closed.jaxpr, (), visit, root_name)

    rows, emitted = [], set()
    for kind, i in order:
        if kind == "leaf":
            for j in range(i + 1):
                if j not in emitted:
                    emitted.add(j)
                    rows.append(leaf_rows[j])
        else:
            rows.append(functional[i])
    rows += [leaf_rows[j] for j in range(len(leaves)) if j not in emitted]
    for row, (path, module, in_shape, out_shape) in zip(leaf_rows, leaves):
        if hasattr(module, "summary_cost") and in_shape and out_shape:
            row.flops, row.macs = module.summary_cost(in_shape[1:], out_shape[1:])
    rows += _unused_rows(variables, paths)

    trainable = _count(variables.get("params", {}))
    non_trainable = sum(_count(v) for k, v in variables.items() if k != "params" and k not in STATS_COLLECTIONS)
    total_flops = sum(r.flops for r in rows) + other[0]
    return Summary(
        model=type(model).__name__, input_shape=input_shape, rows=rows,
        total_params=trainable + non_trainable, trainable_params=trainable,
        non_trainable_params=non_trainable,
        state_count=sum(_count(variables.get(k, {})) for k in STATS_COLLECTIONS),
        total_flops=total_flops, total_macs=sum(r.macs for r in rows), other_flops=other[0])


def summary_table(model: nn.Module, input_shape) -> str:
    """The summary of ``model`` on images of ``input_shape`` (H, W, C), as text."""
    return str(summarize(model, input_shape))


# -- tracing ---------------------------------------------------------------------------------------

def _walk(jaxpr, outer_scope, visit, root_name):
    producers = {}
    for eqn in jaxpr.eqns:
        stack = tuple(s for s in str(eqn.source_info.name_stack).split("/") if s)
        if not outer_scope and stack and stack[0] == root_name:
            stack = stack[1:]
        scope = outer_scope + stack
        subs = list(_sub_jaxprs(eqn))
        if subs and eqn.primitive.name not in ("conv_general_dilated", "dot_general"):
            for sub in subs:
                _walk(sub, scope, visit, root_name)
        else:
            visit(eqn, scope, producers)
        for v in eqn.outvars:
            producers[id(v)] = eqn


def _sub_jaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr
            elif hasattr(item, "eqns"):
                yield item


def _size(shape) -> int:
    return int(np.prod(shape)) if shape else 1


def _cost(eqn) -> tuple[int, int]:
    """(FLOPs, multiply-accumulates) of one primitive."""
    name = eqn.primitive.name
    out = eqn.outvars[0].aval.shape if eqn.outvars else ()
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
        per_output = rhs[spec[1]] * _size([rhs[d] for d in spec[2:]])
        macs = _size(out) * per_output
        return 2 * macs, macs
    if name == "dot_general":
        (contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        macs = _size(out) * _size([lhs[d] for d in contract])
        return 2 * macs, macs
    if name in _REDUCE_WINDOW:
        return _size(out) * _size(eqn.params["window_dimensions"]), 0
    if name in _REDUCE:
        return _size(eqn.invars[0].aval.shape), 0
    if name in _ELEMENTWISE:
        return _size(out), 0
    return 0, 0


def _layer_info(eqn, producers):
    """Window arithmetic of a convolution or pooling primitive, else None."""
    name = eqn.primitive.name
    if name == "conv_general_dilated":
        dn = eqn.params["dimension_numbers"]
        lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
        out = eqn.outvars[0].aval.shape
        dims = [dict(size=lhs[d], kernel=rhs[k], stride=s, pad=tuple(p), dilation=dl)
                for d, k, s, p, dl in zip(dn.lhs_spec[2:], dn.rhs_spec[2:], eqn.params["window_strides"],
                                          eqn.params["padding"], eqn.params["rhs_dilation"])]
        outs = [out[d] for d in dn.out_spec[2:]]
        return {"kind": "conv", "dims": dims, "outs": outs, "out": _nhwc(out, dn.out_spec)}
    if name in _REDUCE_WINDOW:
        shape = eqn.invars[0].aval.shape
        out = eqn.outvars[0].aval.shape
        if len(shape) != 4:
            return None
        window, strides = eqn.params["window_dimensions"], eqn.params["window_strides"]
        dims = [dict(size=shape[d], kernel=window[d], stride=strides[d], pad=tuple(eqn.params["padding"][d]),
                     dilation=eqn.params["window_dilation"][d]) for d in (1, 2)]
        kind = "avg_pool" if "sum" in name else "max_pool"
        return {"kind": kind, "dims": dims, "outs": [out[1], out[2]], "out": out}
    if name in ("reduce_max", "reduce_sum") and tuple(eqn.params["axes"]) == (2, 4):
        shape = eqn.invars[0].aval.shape  # [N, Ho, K, Wo, K, C]: a window reshape
        if len(shape) != 6:
            return None
        size = [shape[1] * shape[2], shape[3] * shape[4]]
        source = producers.get(id(eqn.invars[0]))
        if source is not None and source.primitive.name == "reshape":
            before = producers.get(id(source.invars[0]))
            if before is not None and before.primitive.name == "slice":
                size = list(before.invars[0].aval.shape[1:3])
        dims = [dict(size=size[i], kernel=shape[2 + 2 * i], stride=shape[2 + 2 * i], pad=(0, 0), dilation=1)
                for i in range(2)]
        out = eqn.outvars[0].aval.shape
        kind = "max_pool" if name == "reduce_max" else "avg_pool"
        return {"kind": kind, "dims": dims, "outs": [out[1], out[2]], "out": out}
    return None


def _nhwc(shape, spec):
    return tuple(shape[d] for d in (spec[0], *spec[2:], spec[1]))


def _arithmetic(info, module) -> str:
    """'⌊(28 + 2·2 − 5)/1⌋ + 1 = 28' for each spatial dimension (once when they agree)."""
    from jaxcnn.models.common import AdaptiveAvgPool

    if isinstance(module, AdaptiveAvgPool):
        return ""  # filled in by _module_row
    ceil = bool(getattr(module, "ceil_mode", False))
    texts = []
    for d, out in zip(info["dims"], info["outs"]):
        lo, hi = d["pad"]
        if ceil:
            lo = hi = getattr(module, "padding", 0)
        pad = f"2·{lo}" if lo == hi else f"{lo} + {hi}"
        span = (f"{d['dilation']}·({d['kernel']} − 1) − 1" if d["dilation"] > 1
                else f"{d['kernel']}")
        inner = f"({d['size']} + {pad} − {span})/{d['stride']}"
        if ceil:
            text = f"⌈{inner}⌉ + 1"
            numerator = d["size"] + 2 * lo - d["kernel"]
            if -(-numerator // d["stride"]) + 1 != out:
                text += " − 1"  # PyTorch: the last window may not start in the right padding
        else:
            text = f"⌊{inner}⌋ + 1"
        texts.append(f"{text} = {out}")
    if len(texts) == 2 and texts[0] == texts[1]:
        return texts[0]
    return "H: " + texts[0] + "; W: " + texts[1] if len(texts) == 2 else "; ".join(texts)


def _module_row(call, variables) -> Row:
    from jaxcnn.models.common import AdaptiveAvgPool

    path, module, in_shape, out_shape = call
    params = trainable = 0
    for collection, tree in variables.items():
        if collection in STATS_COLLECTIONS:
            continue
        node = _get(tree, path)
        if isinstance(node, dict):
            n = sum(_size(v.shape) for v in node.values() if not isinstance(v, dict))
            params += n
            trainable += n if collection == "params" else 0
    row = Row("/".join(path) or type(module).__name__, type(module).__name__,
              tuple(out_shape[1:]) if out_shape else (), params, trainable)
    if isinstance(module, AdaptiveAvgPool) and in_shape and out_shape:
        row.arithmetic = (f"adaptive: {in_shape[1]}×{in_shape[2]} → {out_shape[1]}×{out_shape[2]}"
                          if len(out_shape) == 4 else "")
    return row


def _unused_rows(variables, called_paths) -> list:
    """Rows for variables of modules the evaluation pass does not call (GoogLeNet's aux heads)."""
    found = {}

    def visit(tree, path, collection):
        if path and path not in called_paths:
            count = _count(tree)
            entry = found.setdefault(path, [0, 0])
            entry[0] += count
            entry[1] += count if collection == "params" else 0
            return
        for key, value in tree.items():
            if isinstance(value, dict):
                visit(value, path + (key,), collection)

    for collection, tree in variables.items():
        if collection not in STATS_COLLECTIONS:
            visit(tree, (), collection)
    return [Row("/".join(p), "training only", (), n, t) for p, (n, t) in found.items()]


def _get(tree, path):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _count(tree) -> int:
    return sum(_size(x.shape) for x in jax.tree.leaves(tree))


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
    out = [f"Model: {s.model}, input {_shape_text(s.input_shape)} (one image, evaluation mode)",
           "=" * rule_width, line(header), "=" * rule_width]
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
        model_config = dict(config["model"])
        name = model_config.pop("name")
        model_config.update(kwargs)
        kwargs = model_config
        dataset = config["data"]["dataset"]
        known = DATASET_SHAPES.get(dataset)
        if known is None and (input_text is None or num_classes is None):
            raise UserError(f"The input shape and class count of dataset {dataset!r} are not known "
                            "here: give --input H,W,C and --num-classes N.")
        shape = _parse_input(input_text) if input_text else known[0]
        classes = num_classes or known[1]
        label = f"{name} ({os.path.basename(target)})"
    else:
        name = target
        if name not in models.MODELS:
            models.create_model(name, 10)  # raises the UserError naming the valid models
        native_shape, native_classes = models.native_input(name)
        shape = _parse_input(input_text) if input_text else native_shape
        classes = num_classes or native_classes
        label = name
    return models.create_model(name, classes, **kwargs), shape, label


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
        text = summary_table(model, shape)
    except UserError as e:
        if args.debug:
            raise
        print(textwrap.fill("error: " + " ".join(str(e).split()), width=100), file=sys.stderr)
        return 2
    print(text.replace(f"Model: {type(model).__name__}", f"Model: {label}", 1), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
