"""torchvision weights as Flax variables: ``from_torchvision(name, state_dict)``.

    import torchvision
    tv = torchvision.models.resnet50(weights="IMAGENET1K_V2").eval()
    variables = jaxcnn.models.from_torchvision("resnet50", tv.state_dict())
    model = jaxcnn.models.create_model("resnet50", 1000)
    logits = model.apply(variables, images_nhwc, train=False)   # == tv(images_nchw)

Supported: ``alexnet``, ``vgg11`` ... ``vgg19`` and their ``_bn`` variants, ``googlenet`` (with or
without the auxiliary heads, as the state dict has them) and ``resnet18`` ... ``resnet152``; also
``alexnet_original`` from a PyTorch model laid out like torchvision's AlexNet (see
``ALEXNET_ORIGINAL_LAYOUT``). Neither torch nor torchvision is needed here: the state dict's
values may be torch tensors or numpy arrays. The class count comes from the state dict.

How the weights map (PyTorch is NCHW, these models NHWC):

- convolution weight [O, I/groups, kh, kw] -> Flax kernel [kh, kw, I/groups, O] (one transpose).
  Grouped convolutions (``alexnet_original``'s conv2, conv4, conv5) use the same layout on both
  sides: output channel o belongs to group o // (O/groups) and sees that group's I/groups inputs;
- linear weight [out, in] -> kernel [in, out]. The first dense layer after a flatten also
  reorders its inputs: PyTorch flattens (C, H, W), NHWC flattens (H, W, C), so the weight is
  reshaped to [out, C, H, W], transposed to [H, W, C, out] and flattened (AlexNet 256x6x6,
  VGG 512x7x7, GoogLeNet's auxiliary fc1 128x4x4);
- BatchNorm weight/bias -> ``params`` scale/bias, running_mean/running_var -> ``batch_stats``
  mean/var (``num_batches_tracked`` is dropped). Epsilons agree (1e-5; GoogLeNet 1e-3);
- LRN, pooling, dropout and ReLU have no weights. PyTorch's ``nn.LocalResponseNorm(size, alpha)``
  divides alpha by size: the paper's LRN (alpha=1e-4 on the sum) is PyTorch's
  ``LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2)``.

PyPI's torchvision wheels are CUDA builds: next to the CPU torch their compiled operators do not
load, and ``import torchvision`` fails with "operator torchvision::nms does not exist". The model
code does not need those operators; ``tests/test_torchvision.py`` (``_import_torchvision``) shows
how to declare them and import it anyway.

Every state-dict entry must be used and every variable of the model filled with the shape the
model expects; anything else is a UserError naming the entry.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn.errors import UserError

CONV, LINEAR, BN = "conv", "linear", "bn"

# A PyTorch version of alexnet_original: features = [conv1, ReLU, LRN, MaxPool, conv2 (groups=2),
# ReLU, LRN, MaxPool, conv3, ReLU, conv4 (groups=2), ReLU, conv5 (groups=2), ReLU, MaxPool],
# avgpool = AdaptiveAvgPool2d(6), classifier = [fc6, ReLU, Dropout, fc7, ReLU, Dropout, fc8].
ALEXNET_ORIGINAL_LAYOUT = {"features.0": "conv1", "features.4": "conv2", "features.8": "conv3",
                           "features.10": "conv4", "features.12": "conv5", "classifier.0": "fc6",
                           "classifier.3": "fc7", "classifier.6": "fc8"}


def _alexnet(names, fc6_input=(256, 6, 6)):
    entries = []
    for tv, ours in names.items():
        if ours.startswith("conv"):
            entries.append((tv, (ours,), CONV, None))
        else:
            entries.append((tv, (ours,), LINEAR, fc6_input if ours == "fc6" else None))
    return entries


def _vgg(layers, batch_norm):
    entries, index = [], 0
    for stage, count in enumerate(layers, start=1):
        for i in range(1, count + 1):
            entries.append((f"features.{index}", (f"conv{stage}_{i}",), CONV, None))
            if batch_norm:
                entries.append((f"features.{index + 1}", (f"bn{stage}_{i}",), BN, None))
            index += 3 if batch_norm else 2
        index += 1  # the max-pool
    entries += [("classifier.0", ("fc6",), LINEAR, (512, 7, 7)), ("classifier.3", ("fc7",), LINEAR, None),
                ("classifier.6", ("fc8",), LINEAR, None)]
    return entries


def _resnet(stage_sizes, bottleneck):
    entries = [("conv1", ("conv1",), CONV, None), ("bn1", ("bn1",), BN, None)]
    convs = 3 if bottleneck else 2
    for i, blocks in enumerate(stage_sizes, start=1):
        for j in range(blocks):
            block = f"layer{i}_{j}"
            for k in range(1, convs + 1):
                entries += [(f"layer{i}.{j}.conv{k}", (block, f"conv{k}"), CONV, None),
                            (f"layer{i}.{j}.bn{k}", (block, f"bn{k}"), BN, None)]
            entries += [(f"layer{i}.{j}.downsample.0", (block, "downsample_conv"), CONV, "optional"),
                        (f"layer{i}.{j}.downsample.1", (block, "downsample_bn"), BN, "optional")]
    return entries + [("fc", ("fc",), LINEAR, None)]


def _googlenet(aux):
    from jaxcnn.models.googlenet import INCEPTION

    def basic(tv, ours):
        return [(f"{tv}.conv", ours + ("conv",), CONV, None), (f"{tv}.bn", ours + ("bn",), BN, None)]

    entries = basic("conv1", ("conv1",)) + basic("conv2", ("conv2",)) + basic("conv3", ("conv3",))
    branches = {"branch1": "branch1", "branch2.0": "branch2_reduce", "branch2.1": "branch2",
                "branch3.0": "branch3_reduce", "branch3.1": "branch3", "branch4.1": "branch4"}
    for block in INCEPTION:
        for tv, ours in branches.items():
            entries += basic(f"inception{block}.{tv}", (f"inception{block}", ours))
    if aux:
        for head in ("aux1", "aux2"):
            entries += basic(f"{head}.conv", (head, "conv"))
            entries += [(f"{head}.fc1", (head, "fc1"), LINEAR, (128, 4, 4)),
                        (f"{head}.fc2", (head, "fc2"), LINEAR, None)]
    return entries + [("fc", ("fc",), LINEAR, None)]


def _entries(name, arrays):
    from jaxcnn.models import resnet, vgg

    if name == "alexnet":
        names = {"features.0": "conv1", "features.3": "conv2", "features.6": "conv3", "features.8": "conv4",
                 "features.10": "conv5", "classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8"}
        return _alexnet(names), "fc8", {}
    if name == "alexnet_original":
        return _alexnet(ALEXNET_ORIGINAL_LAYOUT), "fc8", {}
    base = name[:-3] if name.endswith("_bn") else name
    if base in vgg.LAYERS:
        return _vgg(vgg.LAYERS[base], name.endswith("_bn")), "fc8", {}
    depth = name[len("resnet"):] if name.startswith("resnet") else ""
    if depth.isdigit() and int(depth) in resnet.STAGE_SIZES:
        return _resnet(resnet.STAGE_SIZES[int(depth)], int(depth) >= 50), "fc", {}
    if name == "googlenet":
        aux = any(k.startswith("aux1.") for k in arrays)
        return _googlenet(aux), "fc", {"aux_logits": aux}
    raise UserError(
        f"from_torchvision does not know model {name!r}. It imports alexnet, alexnet_original, "
        "vgg11/13/16/19 (and _bn), googlenet and resnet18/34/50/101/152.")


def _numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def from_torchvision(name: str, state_dict, **model_kwargs) -> dict:
    """Flax variables {'params', 'batch_stats'} for ``create_model(name, num_classes,
    **model_kwargs)`` from a torchvision ``state_dict`` (see the module docstring)."""
    from jaxcnn.models import create_model

    arrays = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    entries, head, inferred = _entries(name, arrays)
    head_key = next(tv for tv, ours, _, _ in entries if ours == (head,)) + ".weight"
    if head_key not in arrays:
        raise UserError(f"The state dict has no {head_key!r}: is it a torchvision {name} state dict?")
    num_classes = int(np.shape(_numpy(arrays[head_key]))[0])
    model = create_model(name, num_classes, **{**inferred, **model_kwargs})
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))

    variables: dict = {"params": {}, "batch_stats": {}}
    used = set()

    def take(key):
        if key not in arrays:
            raise UserError(f"The state dict lacks {key!r}, needed for {name}.")
        used.add(key)
        return _numpy(arrays[key])

    for tv, ours, kind, extra in entries:
        if extra == "optional" and f"{tv}.weight" not in arrays:
            continue
        if kind == CONV:
            _set(variables["params"], ours + ("kernel",), take(f"{tv}.weight").transpose(2, 3, 1, 0))
            if f"{tv}.bias" in arrays:
                _set(variables["params"], ours + ("bias",), take(f"{tv}.bias"))
        elif kind == LINEAR:
            w = take(f"{tv}.weight")
            if extra is not None:  # the first dense layer after a flatten: (C, H, W) -> (H, W, C)
                c, h, wd = extra
                w = w.reshape(w.shape[0], c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
            _set(variables["params"], ours + ("kernel",), w.T)
            _set(variables["params"], ours + ("bias",), take(f"{tv}.bias"))
        else:
            _set(variables["params"], ours + ("scale",), take(f"{tv}.weight"))
            _set(variables["params"], ours + ("bias",), take(f"{tv}.bias"))
            _set(variables["batch_stats"], ours + ("mean",), take(f"{tv}.running_mean"))
            _set(variables["batch_stats"], ours + ("var",), take(f"{tv}.running_var"))

    unused = sorted(set(arrays) - used)
    if unused:
        raise UserError(f"State dict entries that {name} has no place for: {', '.join(unused[:8])}"
                        + (" ..." if len(unused) > 8 else "") + ".")
    if not variables["batch_stats"]:
        del variables["batch_stats"]
    want = jax.tree_util.tree_flatten_with_path(expected)[0]
    got = dict(jax.tree_util.tree_flatten_with_path(variables)[0])
    for path, leaf in want:
        if path not in got:
            raise UserError(f"The state dict gives no value for {jax.tree_util.keystr(path)} of {name}.")
        if got.pop(path).shape != leaf.shape:
            raise UserError(f"{jax.tree_util.keystr(path)} of {name}: the state dict's weight does not "
                            f"have the expected shape {leaf.shape} (a different configuration?).")
    if got:
        raise UserError(f"{name} has no variable {jax.tree_util.keystr(next(iter(got)))}.")
    return jax.tree.map(jnp.asarray, variables)
