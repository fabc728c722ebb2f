"""benchmarks/cpu_levers.py: how a variant's words are read (environment, XLA flags, model
settings, another checkout), checked without measuring anything."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import cpu_levers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_variant_splits_into_environment_flags_model_settings_and_checkout():
    spec = f"JAXCNN_CPU_DEVICES=1 --xla_cpu_multi_thread_eigen=false model.lowering=xla checkout={ROOT}"
    env = cpu_levers.environment(spec)
    assert env["JAXCNN_CPU_DEVICES"] == "1"
    assert env["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false"
    assert "checkout" not in env and "model.lowering" not in env
    assert cpu_levers.model_options(spec) == {"lowering": "xla"}
    assert cpu_levers.checkout(spec) == ROOT
    assert cpu_levers.checkout("JAXCNN_CPU_DEVICES=1") is None


def test_a_checkout_that_is_not_a_jaxcnn_clone_is_refused(tmp_path):
    with pytest.raises(SystemExit, match=r"checkout=.*: no benchmarks/train_speed.py there"):
        cpu_levers.checkout(f"checkout={tmp_path}")
