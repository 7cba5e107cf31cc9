"""Every command answers --help, and refuses a missing config, before it
imports TensorFlow: a stranger's first try takes a second, not the ten that
importing TensorFlow takes, and a typo costs nothing.

Each command runs as a user runs it (the repository's scripts, or ``python
-m misc.commands.X``) in a fresh interpreter, which then reports whether
TensorFlow was imported.
"""

import os
import subprocess
import sys

import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs a script or module as __main__ with the given arguments, then prints
# whether TensorFlow (or Keras) was imported, and exits with its exit code.
RUNNER = """
import runpy, sys
target, arguments = sys.argv[1], sys.argv[2:]
code = 0
try:
    if target.endswith(".py"):
        sys.argv = [target, *arguments]
        sys.path.insert(0, ".")
        runpy.run_path(target, run_name="__main__")
    else:
        sys.argv = [target, *arguments]
        runpy.run_module(target, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
print("imported:", "tensorflow" in sys.modules or "keras" in sys.modules, file=sys.stderr)
sys.exit(code)
"""

SCRIPTS = ["stageI/run_exp.py", "stageII/run_exp.py", "demo/demo.py", "demo/embed.py",
           "data/generate_shapes.py", "data/build_dataset.py"]
MODULES = ["misc.commands." + name for name in (
    "train", "demo", "embed", "evaluate", "evaluate_shapes", "benchmark", "compare",
    "convert_checkpoint", "generate_shapes", "preprocess_birds", "preprocess_flowers", "shapes_diagnosis",
    "build_dataset", "export_folder", "train_text_encoder", "caption_separation")]

# Commands that read a config (--cfg), with the other arguments they require.
WITH_CONFIG = {
    "stageI/run_exp.py": [], "stageII/run_exp.py": [], "demo/demo.py": [],
    "misc.commands.train": [], "misc.commands.evaluate": ["--inception", "missing.pb"],
    "misc.commands.evaluate_shapes": ["--checkpoint", "missing.ckpt"],
    "misc.commands.benchmark": [], "misc.commands.shapes_diagnosis": [],
    "misc.commands.compare": ["--side", "--xla off", "--side", "--xla on"],
    "misc.commands.train_text_encoder": [],
}


def run(target, *arguments):
    done = subprocess.run([sys.executable, "-c", RUNNER, target, *arguments], cwd=REPOSITORY,
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("imported: "), done.stderr
    return done.returncode, done.stdout, lines[:-1], lines[-1] == "imported: True"


def test_every_entry_point_is_listed():
    """A new command gets these checks too."""
    commands = os.path.join(REPOSITORY, "misc", "commands")
    found = {"misc.commands." + name[:-3] for name in os.listdir(commands)
             if name.endswith(".py") and name not in ("__init__.py", "common.py", "startup.py", "stages.py",
                                                      "benchmark_worker.py")}
    assert found == set(MODULES)


@pytest.mark.parametrize("target", SCRIPTS + MODULES)
def test_help_without_tensorflow(target):
    code, out, err, imported = run(target, "--help")
    assert code == 0, err
    assert out.startswith("usage: ") and "--" in out
    assert not imported, f"{target} --help imported TensorFlow"


@pytest.mark.parametrize("target", sorted(WITH_CONFIG))
def test_missing_config_is_one_line_without_tensorflow(target):
    code, out, err, imported = run(target, "--cfg", "no/such/config.yml", *WITH_CONFIG[target])
    assert code == 2
    assert err == ["error: no/such/config.yml: config file not found. Check the --cfg path."]
    assert not imported, f"{target} imported TensorFlow before reading its config"
