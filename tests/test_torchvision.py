"""The zoo against torchvision itself: parameter counts, and logits with torchvision's weights.

Runs where torch and torchvision are installed (``.ci/run`` installs the CPU wheel
torch==2.13.0+cpu and torchvision==0.28.0 with --no-deps, and sets JAXCNN_REQUIRE_TORCH=1, which
turns a missing torch into a failure); elsewhere it is skipped.

PyPI has no CPU build of torchvision: its wheels link their compiled operators (nms, roi_align,
...) against torch's CUDA libraries, which the CPU torch lacks. The operators then fail to load,
and ``import torchvision`` stops at ``register_fake("torchvision::nms")`` with "operator
torchvision::nms does not exist". The model code is pure Python and needs none of those
operators, so ``_import_torchvision`` declares the two operators' schemas (with no kernel) and
imports again.

Logit tests: random torchvision weights, BatchNorm running statistics and affine parameters
randomised, evaluation mode, 2 random 64x64 images (every model here pools adaptively, so small
inputs exercise the same weights), 17 classes. One network per family and the distinct weight
layouts: alexnet, vgg11_bn, vgg16, googlenet (evaluation with transform_input, and training with
the auxiliary heads, whose batch-statistics logits are compared too), resnet18, resnet50; alexnet_original against the same network written in PyTorch
(grouped convolutions, LocalResponseNorm). The deeper variants (vgg19_bn, resnet34, resnet152)
share those layouts: for them the whole state dict is mapped and shape-checked on zeros.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import missing
from jaxcnn.errors import UserError
from jaxcnn.models import create_model, from_torchvision
from jaxcnn.models.torchvision_import import ALEXNET_ORIGINAL_LAYOUT

TORCHVISION_NAMES = ["alexnet", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
                     "vgg19_bn", "googlenet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
_schemas = []


def _import_torchvision():
    try:
        import torch
    except ImportError:
        missing("torch", "pip install torch==2.13.0+cpu", bool(os.environ.get("JAXCNN_REQUIRE_TORCH")))
    try:
        import torchvision
    except ImportError:
        missing("torchvision", "pip install --no-deps torchvision==0.28.0",
                bool(os.environ.get("JAXCNN_REQUIRE_TORCH")))
    except RuntimeError as e:
        if "torchvision::nms" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        if not _schemas:
            library = torch.library.Library("torchvision", "DEF")
            for op in ("nms", "qnms"):
                library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _schemas.append(library)  # keep the definitions alive
        import torchvision
    return torch, torchvision


@pytest.fixture(scope="module")
def tv():
    return _import_torchvision()


def _tv_model(tv, name, **kwargs):
    torch, torchvision = tv
    if name == "googlenet":
        kwargs = {"aux_logits": True, "init_weights": True, **kwargs}
    return getattr(torchvision.models, name)(weights=None, **kwargs)


def _randomise_batchnorm(torch, model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(n, generator=generator) - 0.5)


def _assert_logits_equal(ours, ref):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    err, scale = np.abs(ours - ref).max(), np.abs(ref).max()
    assert err <= 1e-4 * max(1.0, scale), (err, scale)  # 1e-4 (relative for logits above 1)
    assert err <= 1e-3 * scale, (err, scale)  # and small against the logits themselves


def _nhwc(torch_images):
    return jnp.asarray(torch_images.numpy().transpose(0, 2, 3, 1))


@pytest.mark.parametrize("name", TORCHVISION_NAMES)
def test_parameter_counts_equal_torchvision(tv, name):
    torch, _ = tv
    with torch.device("meta"):  # shapes only, no weights
        model = _tv_model(tv, name)
    want = sum(p.numel() for p in model.parameters())
    ours = create_model(name, 1000)
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: ours.init(jax.random.key(0), x), x)
    assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"])) == want
    if name == "googlenet":
        with torch.device("meta"):
            plain = _tv_model(tv, name, aux_logits=False)
        x_plain = jax.eval_shape(lambda x: create_model(name, 1000, aux_logits=False).init(
            jax.random.key(0), x), x)
        assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(x_plain["params"])) == sum(
            p.numel() for p in plain.parameters())


@pytest.mark.parametrize("name", ["alexnet", "vgg11_bn", "vgg16", "googlenet", "resnet18", "resnet50"])
def test_logits_equal_torchvision_in_evaluation(tv, name):
    torch, _ = tv
    torch.manual_seed(0)
    # GoogLeNet here also maps its inputs as torchvision's pretrained one does (transform_input).
    extra = {"transform_input": True} if name == "googlenet" else {}
    model = _tv_model(tv, name, num_classes=17, **extra).eval()
    _randomise_batchnorm(torch, model)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(images).numpy()
    variables = from_torchvision(name, model.state_dict(), **extra)
    ours = create_model(name, 17, **extra)
    logits = jax.jit(lambda v, x: ours.apply(v, x, train=False))(variables, _nhwc(images))
    _assert_logits_equal(logits, ref)


def test_googlenet_auxiliary_heads_equal_torchvision_in_training(tv):
    torch, _ = tv
    torch.manual_seed(1)
    model = _tv_model(tv, "googlenet", num_classes=17, dropout=0.0, dropout_aux=0.0).train()
    _randomise_batchnorm(torch, model)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        main, aux2, aux1 = model(images)  # batch statistics, as in training
    variables = from_torchvision("googlenet", model.state_dict())
    ours = create_model("googlenet", 17, dropout=0.0, dropout_aux=0.0)
    (logits, aux), _ = jax.jit(lambda v, x: ours.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, _nhwc(images))
    for a, b in zip([logits, *aux], [main, aux1, aux2]):
        _assert_logits_equal(a, b.numpy())


def test_alexnet_original_equals_pytorch_with_groups_and_local_response_norm(tv):
    torch, _ = tv
    nn = torch.nn
    torch.manual_seed(2)
    lrn = lambda: nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)  # noqa: E731 (alpha / size = 1e-4)
    model = nn.Module()
    model.features = nn.Sequential(
        nn.Conv2d(3, 96, 11, 4, 2), nn.ReLU(), lrn(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), lrn(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2))
    model.avgpool = nn.AdaptiveAvgPool2d(6)
    model.classifier = nn.Sequential(nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096),
                                      nn.ReLU(), nn.Dropout(), nn.Linear(4096, 17))
    assert {k.rsplit(".", 1)[0] for k in model.state_dict()} == set(ALEXNET_ORIGINAL_LAYOUT)
    model.eval()
    images = torch.randn(2, 3, 64, 64) * 100  # large activations: the LRN denominators matter
    with torch.no_grad():
        x = torch.flatten(model.avgpool(model.features(images)), 1)
        ref = model.classifier(x).numpy()
    variables = from_torchvision("alexnet_original", model.state_dict())
    ours = create_model("alexnet_original", 17)
    logits = jax.jit(lambda v, x: ours.apply(v, x, train=False))(variables, _nhwc(images))
    _assert_logits_equal(logits, ref)


@pytest.mark.parametrize("name", ["vgg19_bn", "resnet34", "resnet152"])
def test_every_weight_of_the_deeper_variants_finds_its_place(tv, name):
    torch, _ = tv
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in _tv_model(tv, name).state_dict().items()}
    zeros = {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
    variables = from_torchvision(name, zeros)
    n_tv = sum(int(np.prod(s)) for k, s in shapes.items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"])) == n_tv


def test_from_torchvision_rejects_what_does_not_fit(tv):
    torch, _ = tv
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in _tv_model(tv, "resnet18").state_dict().items()}
    zeros = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    with pytest.raises(UserError, match="does not know model 'resnet19'"):
        from_torchvision("resnet19", zeros)
    with pytest.raises(UserError, match="has no place for: extra.weight"):
        from_torchvision("resnet18", {**zeros, "extra.weight": np.zeros(3)})
    missing = dict(zeros)
    del missing["layer2.0.downsample.0.weight"]
    with pytest.raises(UserError):
        from_torchvision("resnet18", missing)
    with pytest.raises(UserError, match="lacks 'layer1.0.bn1.running_var'"):
        from_torchvision("resnet18", {k: v for k, v in zeros.items() if k != "layer1.0.bn1.running_var"})
    with pytest.raises(UserError, match="expected shape"):
        from_torchvision("resnet18", zeros, small_input=True)  # a 3x3 conv1 cannot take 7x7 weights
