"""keep_freed_memory: steady-state XLA:CPU training steps reuse memory instead of page-faulting."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Trains the CNN with BatchNorm at batch 128 on generated 28x28 images on one CPU device and
# prints the median of the minor page faults of steps 10..29. Its XLA temporary buffer (~76 MB) is
# far above glibc's largest mmap threshold (32 MB), so without keep_freed_memory every step maps
# it afresh.
SCRIPT = r"""
import json, resource, sys
from jaxcnn import hostmem
applied = hostmem.keep_freed_memory()
import jax, numpy as np
from jaxcnn import config as config_lib, datasets, train
rng = np.random.default_rng(0)
images = rng.integers(0, 256, (1024, 28, 28, 1), dtype=np.uint8)
labels = rng.integers(0, 10, 1024).astype(np.int32)
data = datasets.Dataset("synthetic", images, labels, images[:128], labels[:128], 10,
                        tuple("abcdefghij"), "generated")
config = config_lib.resolve({"model": {"name": "cnn", "batch_norm": True}, "batch_size": 128})
trainer = train.Trainer(config, data, train.make_mesh())
sums = trainer.zero_sums()
faults = []
for step in range(30):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    trainer.state, sums = trainer.feed.train(trainer.state, sums, 0, step % trainer.steps_per_epoch)
    sums = jax.block_until_ready(sums)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"applied": applied, "faults_per_step": float(np.median(faults[10:]))}))
"""


def faults_per_step(keep: bool) -> dict:
    env = dict(os.environ, JAXCNN_KEEP_FREED_MEMORY="1" if keep else "0", JAX_PLATFORMS="cpu",
               XLA_FLAGS="", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_training_steps_stop_page_faulting_once_freed_memory_is_kept():
    kept, default = faults_per_step(True), faults_per_step(False)
    assert kept["applied"] and not default["applied"]
    # Without it each step maps its ~76 MB temporary buffer afresh: ~19,500 faults (4 KiB pages).
    assert default["faults_per_step"] > 5000, default
    assert kept["faults_per_step"] < 200, kept
