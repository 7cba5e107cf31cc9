"""The benchmark (misc/commands/benchmark.py, misc/training/benchmark.py)
and the side-by-side timer (misc/commands/compare.py) on tiny configs: the
figures are present and consistent.

Both stages run end to end on the default strategy (Stage-II chosen from
CONFIG_NAME); the multi-replica path of the step and the measurement runs on
a two-replica MirroredStrategy over the two logical CPUs of tests/conftest.py
with a stand-in trainer (a full GAN traced for two replicas takes ~30 s here).
"""

import json
import re
import subprocess
import types

import numpy as np
import pytest
import tensorflow as tf

from misc.commands import benchmark as command
from misc.commands import compare
from misc.config import ConfigError, load_config, stage_of
from misc.training import benchmark
from misc.training.gan_trainer import GANTrainer
from tests.tiny_dataset import write_config

BATCH = 4
TEXT_DIM = 16


def tiny_config(path, config_name):
    write_config(path, {
        "CONFIG_NAME": config_name, "Z_DIM": 8,
        "TRAIN": {"BATCH_SIZE": BATCH, "NUM_EMBEDDING": 4},
        "GAN": {"EMBEDDING_DIM": 8, "DF_DIM": 4, "GF_DIM": 8},
    })
    return str(path)


def run_benchmark(tmp_path, capsys, config_name, strategy=None):
    cfg = tiny_config(tmp_path / f"{config_name}.yml", config_name)
    out = tmp_path / "bench.json"
    returned = command.main(["--cfg", cfg, "--steps", "2", "--warmup", "1", "--num-images", "8",
                             "--embedding-dim", str(TEXT_DIM), "--json", str(out)],
                            strategy=strategy)
    with open(out) as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(returned))
    return written, capsys.readouterr().out


def figure(text, pattern):
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the report:\n{text}"
    return float(match.group(1))


def check_figures(result, printed, stage, replicas):
    assert result["status"] == "ok"
    c, d, r = result["config"], result["data"], result["results"]
    assert (c["stage"], c["batch_size"], c["replicas"]) == (stage, BATCH, replicas)
    assert (c["GF_DIM"], c["DF_DIM"], c["EMBEDDING_DIM"], c["Z_DIM"]) == (8, 4, 8, 8)
    assert len(c["devices"]) == replicas
    assert d["stored_size"] == {1: 76, 2: 304}[stage] and d["crop_size"] == {1: 64, 2: 256}[stage]
    assert d["num_images"] == 8 and d["text_embedding_dim"] == TEXT_DIM
    assert result["machine"]["cpu_cores"] >= 1 and result["machine"]["tensorflow"] == tf.__version__

    assert r["measured_steps"] == 2 and r["warmup_steps"] == 1
    mean, median = r["seconds_per_iteration_mean"], r["seconds_per_iteration_median"]
    assert 0 < r["seconds_per_iteration_min"] <= median <= r["seconds_per_iteration_max"]
    assert r["seconds_per_iteration_min"] <= mean <= r["seconds_per_iteration_max"]
    assert r["images_per_second"] == pytest.approx(BATCH / mean, rel=1e-9)
    # the measured steps account for (almost all of) the measured wall time
    assert 2 * mean == pytest.approx(r["measured_wall_s"], rel=0.05)
    assert 0 <= r["data_wait_fraction"] <= 1
    assert r["peak_host_memory_mib"] > 0
    assert r["first_step_s"] > 0
    assert r["peak_gpu_memory_mib"] == {} or all(v > 0 for v in r["peak_gpu_memory_mib"].values())

    printed_mean = figure(printed, r"seconds/iteration\s+mean ([\d.]+)")
    printed_median = figure(printed, r"median ([\d.]+)")
    printed_rate = figure(printed, r"images/second\s+([\d.]+)")
    assert printed_mean == pytest.approx(mean, rel=1e-3)  # printed to 4 significant digits
    assert printed_median == pytest.approx(median, rel=1e-3)
    assert printed_rate == pytest.approx(BATCH / printed_mean, rel=0.01)
    assert 0 <= figure(printed, r"data wait\s+([\d.]+)%") <= 100
    assert figure(printed, r"peak host memory\s+([\d.]+) MiB") > 0
    assert "measured 2 steps" in printed


def test_stage_i(tmp_path, capsys):
    result, printed = run_benchmark(tmp_path, capsys, "stageI")
    check_figures(result, printed, stage=1, replicas=1)
    assert "Stage-I " in printed


def test_stage_ii_chosen_by_config_name(tmp_path, capsys):
    result, printed = run_benchmark(tmp_path, capsys, "stageII")
    check_figures(result, printed, stage=2, replicas=1)
    assert "Stage-II " in printed


class StandInGAN(GANTrainer):
    """Just enough of a trainer for fit's step: the global-batch mean of x."""

    def train_step(self, batch):
        share = tf.reduce_sum(batch["x"]) / (BATCH * 3)  # this replica's part of the mean
        return self.finish_step({}, {"mean": share}, {}, {})


def test_fit_step_and_measurement_on_two_replicas(two_replicas):
    strategy = two_replicas
    with strategy.scope():
        gan = StandInGAN()
    gan.compile(jit_compile=False)
    gan.make_train_function()
    step = gan.distributed_step  # what fit runs and the benchmark times
    data = tf.data.Dataset.range(100).map(lambda i: {"x": tf.fill((BATCH, 3), tf.cast(i, tf.float32))})
    iterator = iter(strategy.experimental_distribute_dataset(data))
    # Each replica holds half of batch 0 (all zeros); the log is the all-reduced mean.
    assert benchmark.wait_for(step(next(iterator)), "summary/mean") == 0.0
    session = types.SimpleNamespace(timed_step=lambda: benchmark.timed_step(step, iterator, "summary/mean"))
    raw = benchmark.measure(session, steps=3, warmup=2)
    assert len(raw["step_times"]) == len(raw["wait_times"]) == 3
    assert all(0 <= w <= t for w, t in zip(raw["wait_times"], raw["step_times"]))
    assert sum(raw["step_times"]) <= raw["wall_s"]
    assert benchmark.wait_for(step(next(iterator)), "summary/mean") == 6.0  # batches 1-5 consumed
    assert int(gan.counter.numpy()) == 7
    assert benchmark.replica_devices(strategy) == list(strategy.extended.worker_devices)


def test_synthetic_split_is_in_the_reference_format():
    split = benchmark.synthetic_split(6, stage=2, embedding_dim=TEXT_DIM)
    assert split.images.shape == (6, 304, 304, 3) and split.images.dtype == np.uint8
    assert split.embeddings.shape == (6, 10, TEXT_DIM) and split.embeddings.dtype == np.float32
    assert split.crop_size == 256 and len(split.filenames) == 6 and len(split.class_ids) == 6
    batch = next(split.epoch_batches(0, 0, 3, num_embedding=1))  # one caption: needs its text
    assert batch["images"].shape == (3, 256, 256, 3) and batch["embeddings"].shape == (3, TEXT_DIM)


def test_default_stage_and_argument_checks(tmp_path):
    cfg = tiny_config(tmp_path / "c.yml", "stageII_flowers")
    assert stage_of(load_config(cfg)) == 2
    assert stage_of(load_config(tiny_config(tmp_path / "d.yml", "stageI"))) == 1
    with pytest.raises(SystemExit):
        command.parse_args(["--cfg", cfg, "--warmup", "0"])  # the first step traces


def test_side_by_side_with_a_git_revision(tmp_path, capsys):
    """A side "@HEAD" runs the committed code, the other the working tree,
    each in its own worker process; they alternate single iterations and the
    ratio is of the medians."""
    cfg = str(write_config(tmp_path / "tiny.yml", {
        "CONFIG_NAME": "stageI", "Z_DIM": 8,
        "TRAIN": {"BATCH_SIZE": BATCH, "NUM_EMBEDDING": 4},
        "GAN": {"EMBEDDING_DIM": 8, "DF_DIM": 4, "GF_DIM": 8},
    }))
    out = tmp_path / "side_by_side.json"
    sides = ["--xla off", "@HEAD TF_ENABLE_ONEDNN_OPTS=0 --xla off"]
    result = compare.main(["--cfg", cfg, "--steps", "2", "--warmup", "1", "--num-images", "8",
                           "--embedding-dim", str(TEXT_DIM), "--side", sides[0], "--side", sides[1],
                           "--json", str(out)])
    printed = capsys.readouterr().out
    with open(out) as f:
        assert json.load(f) == json.loads(json.dumps(result))
    head = subprocess.run(["git", "-C", compare.REPOSITORY, "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert result["commits"] == {"HEAD": head} and result["status"] == "ok"
    assert list(result["sides"]) == sides
    assert result["sides"][sides[0]]["root"] == compare.REPOSITORY
    assert result["sides"][sides[1]]["root"] != compare.REPOSITORY  # an extracted copy of HEAD
    for side in result["sides"].values():
        assert len(side["step_times"]) == 2 and all(t > 0 for t in side["step_times"])
        assert side["xla"] is False and side["batch_size"] == BATCH and side["peak_host_memory_mib"] > 0
    c = result["comparison"]
    medians = {name: float(np.median(side["step_times"])) for name, side in result["sides"].items()}
    assert c[sides[0]]["ratio"] == 1.0
    assert c[sides[1]]["median_s"] == pytest.approx(medians[sides[1]])
    assert c[sides[1]]["ratio"] == pytest.approx(medians[sides[1]] / medians[sides[0]])
    rounds = [a / b for a, b in zip(result["sides"][sides[1]]["step_times"],
                                    result["sides"][sides[0]]["step_times"])]
    assert c[sides[1]]["round_ratio_min"] == pytest.approx(min(rounds))
    printed_ratio = figure(printed, r"\[@HEAD [^\]]*\] [\d.]+ s/iteration, ratio ([\d.]+)")
    assert printed_ratio == pytest.approx(c[sides[1]]["ratio"], abs=6e-4)


def test_side_revision_must_be_a_commit(tmp_path):
    cfg = tiny_config(tmp_path / "c.yml", "stageI")
    with pytest.raises(ConfigError, match="--side @no-such-revision"):
        compare.main(["--cfg", cfg, "--side", "@no-such-revision", "--side", "--xla off"])
