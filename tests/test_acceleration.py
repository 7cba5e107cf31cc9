"""How the training step runs on this machine (misc/training/acceleration.py), in
fresh processes under both of TensorFlow's CPU kernel sets
(TF_ENABLE_ONEDNN_OPTS=0 and =1 stand in for CPUs without and with AVX-512)
and with and without native bfloat16 (the CPU flags faked in the child):

* TRAIN.XLA 'auto' compiles a single process's step exactly where that was
  measured faster, without oneDNN (docs/performance.md), and never a step
  that all-reduces across worker processes on CPUs; 'on' there is a
  one-line error naming what the user typed;
* TRAIN.PRECISION 'mixed' computes in bfloat16 where the CPU has it and
  falls back to float32, saying so, where it has not.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
from misc.training import acceleration
from misc.config import default_config
from misc.config import ConfigError
from misc.training import machine
machine.cpu_has_native_bfloat16 = lambda: sys.argv[2] == "1"  # this machine's flags, faked
config = default_config()
out = {"onednn": acceleration.onednn_enabled()}
messages = []
for multi_worker in (False, True):
    out[f"auto_xla_multi_{multi_worker}"] = acceleration.choose_step(config, multi_worker).xla
config.TRAIN.PRECISION = "mixed"
out["mixed"] = acceleration.choose_step(config, log=messages.append).precision
out["messages"] = messages
config.TRAIN.XLA = "on"
try:
    acceleration.choose_step(config, multi_worker=True, names={"XLA": "--xla"})
except ConfigError as exc:
    out["error"] = str(exc)
print(json.dumps(out))
"""


@pytest.mark.parametrize("onednn, bfloat16", [("0", "0"), ("1", "1")])
def test_the_step_choices_follow_the_machine(onednn, bfloat16):
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", CHILD, ROOT, bfloat16], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["onednn"] == (onednn == "1")
    assert out["auto_xla_multi_False"] == (onednn == "0")
    assert out["auto_xla_multi_True"] is False
    if bfloat16 == "1":
        assert out["mixed"] == "mixed_bfloat16" and out["messages"] == []
    else:
        assert out["mixed"] == "float32" and out["messages"] == [
            "TRAIN.PRECISION 'mixed': this CPU has no native bfloat16 arithmetic (avx512_bf16 or amx_bf16); "
            "training in float32."]
    assert out["error"] == (
        "--xla on, but this multi-worker run trains on CPUs, where XLA cannot compile the step's "
        "all-reduce across workers (TensorFlow has no XLA collectives for CPU devices); use 'auto' or 'off'.")
