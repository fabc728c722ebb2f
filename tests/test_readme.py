"""The README's commands are a contract: every command in its ```bash blocks, and every inline
`--set KEY=VALUE`, is checked here without training anything.

- `python -m jaxcnn.launch|plan EXPERIMENT ...`: the file exists, the command line parses, and
  the experiment resolves with the given --set values (config.resolve: every key, type, value).
- `python -m jaxcnn.summary ...`: runs (it is fast).
- `python -m jaxcnn.plot|predict|compare ...` and `python benchmarks/X.py ...`: the module or
  script exists and its argument parser accepts the command line.
- `pip install -e ".[EXTRAS]"`: the extras exist in pyproject.toml.
"""

import os
import re
import shlex
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "README.md")) as f:
    README = f.read()


def bash_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


COMMANDS = bash_commands()


def split(command: str) -> list[str]:
    return shlex.split(command)


def sets_of(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command(command, capsys):
    argv = split(command)
    if argv[:2] == ["pip", "install"]:
        extras = re.fullmatch(r"\.\[([\w,]+)\]", argv[-1]).group(1).split(",")
        with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
            declared = tomllib.load(f)["project"]["optional-dependencies"]
        assert set(extras) <= set(declared), command
        return
    if argv[0] == "tensorboard" or argv[1:3] == ["-m", "pytest"]:
        return  # TensorBoard's own command; the test command is what CI runs
    assert argv[0] == "python", command
    if argv[1] == "-m":
        module, args = argv[2], argv[3:]
        if module in ("jaxcnn.launch", "jaxcnn.plan"):
            from jaxcnn import config as config_lib

            experiment = os.path.join(ROOT, args[0])
            assert os.path.isfile(experiment), command
            if module == "jaxcnn.launch":
                from jaxcnn.launch import parse_args

                parse_args(args)
            config_lib.resolve(config_lib.load_experiment(experiment), sets_of(args))
            return
        if module == "jaxcnn.summary":
            from jaxcnn import summary

            args = [os.path.join(ROOT, a) if a.startswith("experiments/") else a for a in args]
            assert summary.main(args) == 0, capsys.readouterr().err
            return
        script = [sys.executable, "-m", module]
    else:
        script = [sys.executable, os.path.join(ROOT, argv[1])]
        args = argv[2:]
    # The parser must accept the command line: run it with --help appended.
    out = subprocess.run([*script, *args, "--help"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert out.returncode == 0, (command, out.stderr[-1000:])


def inline_sets() -> list[str]:
    """Every `--set KEY=VALUE` written in running text (inside backticks)."""
    found = []
    for code in re.findall(r"`([^`\n]*--set [^`\n]*)`", README):
        found += sets_of(split(code.replace("...", "")))
    return found


@pytest.mark.parametrize("item", inline_sets())
def test_readme_inline_set_values_parse_and_name_real_settings(item):
    from jaxcnn import config as config_lib
    from jaxcnn import models

    path, value = config_lib.parse_set(item)
    if path[0] == "model" and len(path) == 2:  # a model's constructor argument: some model has it
        assert any(path[1] in models.model_options(name) for name in models.MODELS) or \
            path[1] == "name", item
        return
    node = config_lib.DEFAULTS
    for key in path:
        assert isinstance(node, dict) and key in node, item
        node = node[key]
