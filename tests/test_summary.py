"""jaxcnn.summary: the per-layer table (shapes, parameters, FLOPs, output-size arithmetic), its
totals, and the command line."""

import os
import subprocess
import sys

import flax.linen as nn
import pytest

from jaxcnn.models import create_model
from jaxcnn.summary import main, summarize, summary_table

ROOT = os.path.join(os.path.dirname(__file__), "..")


def rows_by_name(summary):
    return {r.name: r for r in summary.rows}


def test_lenet5_table_has_the_textbook_rows_and_arithmetic():
    s = summarize(create_model("lenet5", 10), (28, 28, 1))
    assert [r.name for r in s.rows] == ["conv1", "max_pool_1", "conv2", "max_pool_2", "fc1", "fc2", "classifier"]
    rows = rows_by_name(s)
    assert [rows[n].output_shape for n in ("conv1", "max_pool_1", "conv2", "max_pool_2", "fc1")] == [
        (28, 28, 6), (14, 14, 6), (10, 10, 16), (5, 5, 16), (120,)]
    assert [rows[n].params for n in ("conv1", "conv2", "fc1", "fc2", "classifier")] == [156, 2416, 48120, 10164, 850]
    assert rows["conv1"].arithmetic == "⌊(28 + 2·2 − 5)/1⌋ + 1 = 28"
    assert rows["max_pool_1"].arithmetic == "⌊(28 + 2·0 − 2)/2⌋ + 1 = 14"
    assert rows["conv2"].arithmetic == "⌊(14 + 2·0 − 5)/1⌋ + 1 = 10"
    # FLOPs: 2 per multiply-accumulate plus the bias; conv1 has 28*28*6 outputs of 25 MACs each.
    assert rows["conv1"].macs == 28 * 28 * 6 * 25
    assert rows["conv1"].flops == 2 * 28 * 28 * 6 * 25 + 28 * 28 * 6
    assert rows["fc1"].flops == 2 * 400 * 120 + 120
    assert s.total_macs == 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 400 * 120 + 120 * 84 + 84 * 10
    assert (s.total_params, s.trainable_params, s.non_trainable_params) == (61_706, 61_706, 0)
    text = str(s)
    for line in ("Total params: 61,706", "Trainable params: 61,706", "Non-trainable params: 0",
                 "Total FLOPs: 852,370"):
        assert line in text.splitlines() or any(l.startswith(line) for l in text.splitlines())
    assert "running statistics" not in text  # no BatchNorm


def test_resnet20_counts_batchnorm_statistics_apart_and_shows_strided_arithmetic():
    s = summarize(create_model("resnet20", 10), (32, 32, 3))
    assert (s.total_params, s.trainable_params, s.non_trainable_params) == (269_722, 269_722, 0)
    assert s.state_count == 1_376  # running means and variances of 19 BatchNorms
    rows = rows_by_name(s)
    assert rows["stage2_0/conv1"].arithmetic == "⌊(32 + 2·1 − 3)/2⌋ + 1 = 16"
    assert rows["stage3_0/conv1"].output_shape == (8, 8, 64)
    assert rows["avgpool"].arithmetic == "adaptive: 8×8 → 1×1"
    assert rows["stage1_0/bn1"].params == 32  # scale and bias; mean and var are not parameters
    assert sum(r.params for r in s.rows) == 269_722
    text = summary_table(create_model("resnet20", 10), (32, 32, 3))
    assert "BatchNorm running statistics (state, not parameters): 1,376" in text


def test_lenet5_classic_fixed_prototypes_are_non_trainable():
    s = summarize(create_model("lenet5_classic", 10), (32, 32, 1))
    assert (s.total_params, s.trainable_params, s.non_trainable_params) == (60_840, 60_000, 840)
    rows = rows_by_name(s)
    assert rows["output"].params == 840 and rows["output"].trainable == 0
    assert rows["S2"].arithmetic == "⌊(28 + 2·0 − 2)/2⌋ + 1 = 14"
    assert rows["C3"].macs == 10 * 10 * 1_500  # only the table's connections are computed
    assert "EuclideanRBF, not trainable" in str(s)


def test_googlenet_ceil_mode_pools_and_training_only_heads():
    s = summarize(create_model("googlenet", 1000), (224, 224, 3))
    rows = rows_by_name(s)
    assert rows["maxpool1"].arithmetic == "⌈(112 + 2·0 − 3)/2⌉ + 1 = 56"
    assert rows["maxpool4"].arithmetic == "⌈(14 + 2·0 − 2)/2⌉ + 1 = 7"
    assert rows["inception3a/branch4_pool"].arithmetic == "⌈(28 + 2·1 − 3)/1⌉ + 1 = 28"
    assert rows["conv1/conv"].arithmetic == "⌊(224 + 2·3 − 7)/2⌋ + 1 = 112"
    assert rows["aux1"].kind == "training only" and rows["aux1"].flops == 0
    assert s.total_params == 13_004_888 == sum(r.params for r in s.rows)
    # torchvision's published GFLOPS (multiply-accumulates) for GoogLeNet: 1.498.
    assert round(s.total_macs / 1e9, 3) == 1.498


@pytest.mark.parametrize("name,gmacs", [("resnet50", 4.089), ("alexnet", 0.714), ("resnet18", 1.814)])
def test_multiply_accumulates_match_torchvisions_published_counts(name, gmacs):
    assert round(summarize(create_model(name, 1000), (224, 224, 3)).total_macs / 1e9, 3) == gmacs


def test_functional_pools_in_any_module_get_rows():
    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Conv(4, (3, 3), strides=(2, 2), padding="SAME", name="conv")(x)
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
            x = nn.avg_pool(x, (2, 2), (2, 2))
            return nn.Dense(3, name="head")(x.reshape((x.shape[0], -1)))

    s = summarize(Tiny(), (15, 16, 1))
    assert [r.name for r in s.rows] == ["conv", "max_pool_1", "avg_pool_1", "head"]
    rows = rows_by_name(s)
    # 'SAME' pads W unevenly (0 before, 1 after): H and W are written out apart.
    assert rows["conv"].arithmetic == "H: ⌊(15 + 2·1 − 3)/2⌋ + 1 = 8; W: ⌊(16 + 0 + 1 − 3)/2⌋ + 1 = 8"
    assert rows["max_pool_1"].arithmetic == "⌊(8 + 2·1 − 3)/2⌋ + 1 = 4"
    assert rows["avg_pool_1"].output_shape == (2, 2, 4)


def test_pools_show_the_input_size_before_the_cut_to_whole_windows():
    # LeNet-5 on 30x30: conv2 gives 11x11, and the 2x2 pool drops the last row and column.
    rows = rows_by_name(summarize(create_model("lenet5", 10), (30, 30, 1)))
    assert rows["max_pool_2"].arithmetic == "⌊(11 + 2·0 − 2)/2⌋ + 1 = 5"
    assert rows["max_pool_2"].output_shape == (5, 5, 16)


def test_cli_prints_the_table_for_a_model_and_for_an_experiment(capsys):
    assert main(["resnet20"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Model: resnet20, input 32×32×3")
    assert "Total params: 269,722" in out and "Non-trainable params: 0" in out
    assert main(["resnet20", "--set", "shortcut=projection", "--num-classes", "100"]) == 0
    assert "Total params: 278,324" in capsys.readouterr().out  # 269,722 + 2,752 + 64 * 90 + 90
    assert main([os.path.join(ROOT, "experiments", "lenet5_classic_fashion.py")]) == 0
    out = capsys.readouterr().out
    assert "input 28×28×1" in out and "Trainable params: 60,000" in out
    assert main(["resnet18", "--input", "32,32,3", "--set", "model.small_input=True", "--num-classes", "10"]) == 0
    assert "conv1 (Conv)" in capsys.readouterr().out


def test_the_output_size_formula_is_explained_once_above_the_table(capsys):
    assert main(["lenet5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    legend = ("Output size: ⌊(H + 2P − K)/S⌋ + 1, with H the input size, P the padding (each side), "
              "K the kernel, S the stride")
    assert lines[0].startswith("Model: lenet5") and lines[1] == legend
    assert lines[2].startswith("=") and lines[3].split()[:2] == ["Layer", "(type)"]
    assert sum("⌊(H + 2P − K)/S⌋" in line for line in lines) == 1
    assert lines[1] in summary_table(create_model("lenet5", 10), (28, 28, 1))  # in model_summary.txt too
    text = summary_table(create_model("googlenet", 1000), (224, 224, 3))  # ceil-mode pools
    assert "⌈…⌉: a ceil-mode pooling" in text.splitlines()[2]


def test_a_model_shrunk_to_1x1_before_its_head_gets_a_hint(capsys):
    assert main(["resnet18", "--input", "32,32,3"]) == 0
    out = capsys.readouterr().out
    hint = " ".join(out[out.index("hint: "):].split())
    assert hint.startswith("hint: resnet18 was designed for 224×224 images; on 32×32 its maps shrink "
                           "to 1×1 at layer4_0/conv1, before the head.")
    assert out.rstrip().endswith(
        "python -m jaxcnn.summary resnet18 --input 32,32,3 --num-classes 10 --set small_input=True")
    # Given the classes, the hint does not repeat them; much smaller than 224x224 is enough.
    assert main(["resnet18", "--input", "64,64,3", "--num-classes", "5"]) == 0
    out = capsys.readouterr().out
    assert "much larger than 64×64" in out and "--num-classes" not in out.split("hint: ")[1]
    # No hint with the small-input stem, at the native size, or for models without the option.
    for argv in (["resnet18", "--input", "32,32,3", "--set", "small_input=True", "--num-classes", "10"],
                 ["resnet20"], ["lenet5", "--input", "12,12,1"]):
        assert main(argv) == 0
        assert "hint:" not in capsys.readouterr().out, argv
    # An experiment: the setting goes into the experiment.
    assert main([os.path.join(ROOT, "experiments", "resnet18_imagefolder.py"), "--input", "32,32,3",
                 "--num-classes", "5"]) == 0
    assert "set model.small_input=True in the experiment" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv,message", [
    (["resnet21"], "Unknown model 'resnet21'"),
    (["resnet20", "--input", "32,32"], "--input must be H,W,C"),
    (["resnet20", "--set", "shortcutt=A"], "Did you mean 'shortcut'"),
    (["vgg11", "--input", "28,28,1"], "small_input=True"),
])
def test_cli_mistakes_exit_2_with_one_message(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "jaxcnn.summary", "lenet5"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    assert "max_pool_1 (max_pool)" in out.stdout and "Total params: 61,706" in out.stdout
