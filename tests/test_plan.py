"""jaxcnn.plan: the Trainer's own steps compiled ahead of time for TPU topologies (libtpu, no
TPU needed) and for the CPU. The TPU tests need libtpu (pip install -e ".[tpu]"); CI installs it.
All TPU plans share one process, so libtpu starts once (~25 s), later compiles take seconds."""

import json
import os
import subprocess
import sys

import pytest

from conftest import missing
from jaxcnn import config as config_lib
from jaxcnn import native_stderr, plan
from jaxcnn.errors import UserError
from jaxcnn.models import from_config
from jaxcnn.summary import summarize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(ROOT, "experiments", "lenet_fashion.py")
RESNET20 = os.path.join(ROOT, "experiments", "resnet20_cifar10.py")


def require_libtpu():
    try:
        import libtpu  # noqa: F401
    except ImportError:
        missing("libtpu", 'pip install -e ".[tpu]"', bool(os.environ.get("CI")))


def resolved(path, *sets):
    return config_lib.resolve(config_lib.load_experiment(path), list(sets))


# TPU plans run in a child process, as `python -m jaxcnn.plan` would: libtpu starts once there
# (~25 s) and is kept apart from the JAX CPU backend and libraries this test process loaded (in
# one process with the rest of the suite, a TPU compile crashed once).
PLAN_SCRIPT = r"""
import dataclasses, json, sys
from jaxcnn import config as config_lib, plan
from jaxcnn.errors import UserError
out = {}
for experiment, target, sets in json.loads(sys.argv[1]):
    config = config_lib.resolve(config_lib.load_experiment(experiment), sets)
    try:
        result = plan.plan(config, target)
        plan.check_fits(result)
    except UserError as e:
        out[target + experiment + " ".join(sets)] = {"error": str(e)}
        continue
    result["text"] = plan.format_plan(result)
    result["programs"] = [dataclasses.asdict(p) for p in result["programs"]]
    result["chip"] = dataclasses.asdict(result["chip"])
    out[target + experiment + " ".join(sets)] = result
print(json.dumps(out, default=list))
"""


def plans(cases):
    """{target + experiment: plan or {'error': message}} for (experiment, target, sets) cases."""
    require_libtpu()
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", PLAN_SCRIPT, json.dumps(cases)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# ResNet-20 on tpu-v6e-8 is left out: libtpu 0.0.42's compiler crashes on it (a segfault in
# backend_compile, seen here; the other models compile on v6e-8).
FAST = [(LENET, "tpu-v6e-8", []), (RESNET20, "tpu-v5e-1", []),
        (RESNET20, "tpu-v5e-1", ["batch_size=49152", "data.pipeline=stream"])]
SLOW = [(LENET, "tpu-v5e-1", []), (RESNET20, "tpu-v5e-8", []), (RESNET20, "tpu-v6e-1", [])]


@pytest.fixture(scope="module")
def fast_plans():
    return plans(FAST)


def check_plan(result, experiment):
    config = resolved(experiment)
    devices = int(result["target"].rsplit("-", 1)[1])
    assert result["devices"] == devices and result["device_kind"].startswith("TPU v")
    train, evaluate = result["programs"]
    assert train["argument_bytes"] > 0 and train["flops"] > 0 and evaluate["flops"] > 0
    total = (train["argument_bytes"] + train["output_bytes"] - train["alias_bytes"]
             + train["temp_bytes"])
    assert total < result["chip"]["hbm_bytes"]
    # Training costs about 3 forward passes: the forward FLOPs of the model's own summary.
    model = from_config(config["model"], result["num_classes"])
    forward = summarize(model, tuple(result["image_shape"])).total_flops
    per_image = train["flops"] * devices / config["batch_size"]
    assert 2 * forward < per_image < 5 * forward, (per_image, forward)
    # On several devices the gradients are all-reduced: at least the parameters' float32 bytes.
    if devices > 1:
        assert train["all_reduce_bytes"] >= 4 * result["param_count"]
    assert "ESTIMATE" in result["text"] and "not a measurement" in result["text"]


@pytest.mark.parametrize("experiment, target", [(LENET, "tpu-v6e-8"), (RESNET20, "tpu-v5e-1")])
def test_plans_compile_for_tpu_topologies(fast_plans, experiment, target):
    check_plan(fast_plans[target + experiment], experiment)


@pytest.mark.slow
def test_plans_compile_for_the_other_pairs():
    found = plans(SLOW)
    for experiment, target, sets in SLOW:
        check_plan(found[target + experiment + " ".join(sets)], experiment)


def test_a_batch_that_does_not_fit_is_refused_with_one_that_would(fast_plans):
    err = " ".join(fast_plans[" ".join(["tpu-v5e-1" + RESNET20 + "batch_size=49152",
                                        "data.pipeline=stream"])]["error"].split())
    assert "does not fit on tpu-v5e-1" in err and "of HBM it can use on a TPU v5 lite" in err
    fit = int(err.split("About ")[1].split()[0])
    assert 0 < fit < 49152 and f"--set batch_size={fit}" in err


def test_cpu_target_needs_no_libtpu(capsys):
    assert plan.main([LENET, "--target", "cpu", "--set", "data.pipeline=stream"]) == 0
    out = capsys.readouterr().out
    assert "target cpu: 8 x cpu" in out and "train step" in out and "ESTIMATE" not in out


def test_without_libtpu_a_tpu_target_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setattr(native_stderr, "libtpu_installed", lambda: False)
    assert plan.main([LENET, "--target", "tpu-v5e-8"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "needs libtpu" in err and 'pip install -e ".[tpu]"' in err and "Traceback" not in err


def test_unknown_targets_and_datasets_without_a_record_are_refused(capsys):
    assert plan.main([LENET, "--target", "gpu-h100"]) == 2
    assert "Unknown --target 'gpu-h100'" in capsys.readouterr().err
    with pytest.raises(UserError, match="--num-classes"):
        plan.data_shape(resolved(LENET, "data.dataset=my_tfds_set"), None)
    assert plan.data_shape(resolved(LENET, "data.dataset=my_tfds_set", "data.image_size=64"),
                           7)[:2] == ((64, 64, 3), 7)
    assert plan.topology_name("tpu-v4-64") == ("v4:2x4x4", None)
    assert plan.topology_name("tpu-v5e-8") == ("v5e:2x4", (2, 4, 1))
