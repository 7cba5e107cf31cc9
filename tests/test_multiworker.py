"""Multi-worker training (issue 14): several processes train as one.

* The input pipeline: each worker builds only its replicas' rows of every
  global batch; together they are exactly the single-process global batch
  of each step (noise included), each image once per epoch.
* The cluster: TF_CONFIG is validated (one-line errors), a SLURM step of
  several tasks becomes a cluster of workers.
* Two worker processes on localhost (TF_CONFIG, two free 127.0.0.1 ports,
  CPU only) run ``run_exp.py`` on tiny configs:
    - Stage-I: worker 1 stops after iteration 5 and is killed; the chief
      stops within a bounded time with a one-line error naming the last
      snapshot (model-4); both are restarted from it, resume at iteration 4
      and end with the weights of a single-process run of the same config;
    - Stage-II from scratch, also against a single-process run; worker 1
      receives SIGTERM and both stop after the same iteration;
  only the chief writes (snapshots, summaries, previews), worker 1 leaves
  nothing behind (it runs in its own folder with its own TMPDIR).

Against one process, the workers' gradients and losses are float32 sums in
another order (the all-reduce), so the runs agree to rounding, amplified by
free GAN steps.  At iteration 1 (same weights, same global batch, no update
yet) every logged D loss agrees to 1e-5: the workers saw the global batch, with
synchronised batch statistics and global-batch means; the G losses are computed
after that iteration's D update, so they agree as later losses do.  After
updates the weights are everywhere within the Adam bound of the steps taken
(``adam_travel``), and a fraction of the elements within lr / 2 (a worker on wrong data
moves about half of them by ~2 lr on its first step): 95% after one Stage-II
iteration, 98% after 6 free Stage-I iterations, whose losses agree to 1e-2
(observed 1.5e-5) and batch-norm statistics to 1e-5.  Where an exact
gradient is about zero, Adam's first step (fresh slots: +-lr whatever the
gradient's size) takes the sign of rounding noise, so how many elements
flip depends on the float32 kernels, not on the all-reduce: one Stage-II
iteration of ONE process with TensorFlow's oneDNN kernels against one
without (2-core AVX2 CPU, TF_ENABLE_ONEDNN_OPTS=1 and 0) agrees for 98.1% of
the weight elements within lr / 2 and 76% of the Stage-II discriminator's
moving statistics within 1e-5 (at most 8.4e-5 apart): exactly the
agreement of one process with two workers on that machine (99.99% on an
AVX-512 machine with oneDNN).  Those statistics come from the
discriminator's pass in the generator update, after its own update, so
they carry the flips: they are held to 1e-3 (a batch norm left
unsynchronised across workers moves them by ~1e-2), the generators'
statistics (7e-8 apart) to 1e-5.  Stage-II amplifies the rounding fast (84%
of the weight elements within lr / 2 after two iterations, with either
kernel set against the other too), so its later state is only bounded.
Where an exact gradient is zero (a bias before a batch norm), Adam steps on
rounding noise: those elements, and the moving mean that holds them, are
only bounded.

Every worker process runs under a hard time limit, so nothing hangs.
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from misc.config import ConfigError
from misc.data.datasets import Split
from misc.data.input_pipeline import distributed_training_dataset, training_dataset
from misc.training import cluster
from test_cluster import free_ports
from test_reliability import FAULT_SCRIPT, run_in_process, snapshots
from test_run_exp import STAGE_II, summary_values
from tiny_dataset import stage_i_main, stage_ii_main, tiny_train_config, write_config, write_tiny_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_EXP = {1: os.path.join(ROOT, "stageI", "run_exp.py"), 2: os.path.join(ROOT, "stageII", "run_exp.py")}
WORKER_LIMIT = 240  # seconds: a worker still running then is killed and the test fails
LOST_WORKER_LIMIT = 60  # seconds for the survivors to stop once a worker died
LR = 2e-4  # the tiny configs' (default) learning rates, the largest of the run
LOSS_RTOL = 1e-2  # losses after a few free steps (see the module docstring)
NOISE_SPEC = {"d_eps": (3, "truncated_normal"), "d_z": (2, "normal")}


# -- the input pipeline -------------------------------------------------------

def indexed_split(tmp_path, num_images=13):
    """A split whose image i has every pixel equal to i (a crop tells which
    image it came from); 13 images, batch 4: 3 batches per epoch, one
    image left out."""
    rng = np.random.default_rng(0)
    images = np.repeat(np.arange(num_images, dtype=np.uint8), 76 * 76 * 3).reshape(num_images, 76, 76, 3)
    return Split(images, rng.normal(size=(num_images, 10, 6)).astype(np.float32),
                 [f"f{i}" for i in range(num_images)], np.arange(num_images) % 3, str(tmp_path), 64)


@pytest.mark.parametrize("num_workers, replicas_per_worker", [(2, 1), (2, 2)])
def test_workers_together_build_exactly_each_global_batch(tmp_path, num_workers, replicas_per_worker):
    split = indexed_split(tmp_path)
    steps, first = 7, 2  # from the middle of epoch 0 to the middle of epoch 3
    whole = list(training_dataset(split, 4, 4, NOISE_SPEC, seed=5, first_step=first).take(steps))
    total = num_workers * replicas_per_worker
    parts = [list(training_dataset(split, 4, 4, NOISE_SPEC, seed=5, first_step=first,
                                   replicas=range(w * replicas_per_worker, (w + 1) * replicas_per_worker),
                                   num_replicas=total).take(steps * replicas_per_worker))
             for w in range(num_workers)]
    seen = {}
    for step in range(steps):
        at = slice(step * replicas_per_worker, (step + 1) * replicas_per_worker)
        pieces = [p for worker in parts for p in worker[at]]
        assert all(p["images"].shape[0] == 4 // total for p in pieces)
        for key in whole[step]:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in pieces]), whole[step][key],
                                          err_msg=f"step {step} {key}")
        epoch = (first + step) // 3
        seen.setdefault(epoch, []).extend(int(i) for p in pieces for i in p["images"][:, 0, 0, 0])
    for epoch, ids in seen.items():  # no image twice in an epoch
        assert len(ids) == len(set(ids)), (epoch, ids)
    assert len(seen[1]) == 12  # a whole epoch: 3 batches of 4 different images


def test_each_replica_of_a_strategy_gets_its_rows(tmp_path, two_replicas):
    split = indexed_split(tmp_path)
    whole = next(iter(training_dataset(split, 4, 4, NOISE_SPEC, seed=5)))
    batch = next(iter(distributed_training_dataset(two_replicas, split, 4, 4, NOISE_SPEC, seed=5)))
    for key, value in whole.items():
        local = two_replicas.experimental_local_results(batch[key])
        assert len(local) == 2 and local[0].shape[0] == 2
        np.testing.assert_array_equal(np.concatenate([v.numpy() for v in local]), value, err_msg=key)


# -- the cluster ----------------------------------------------------------------

GOOD = {"cluster": {"worker": ["127.0.0.1:2001", "127.0.0.1:2002"]}, "task": {"type": "worker", "index": 1}}


@pytest.mark.parametrize("tf_config, message", [
    ("{'cluster': 1}", "not valid JSON"),
    ("[1, 2]", "is a JSON list"),
    (json.dumps({"task": GOOD["task"]}), "'cluster' is missing or empty"),
    (json.dumps({**GOOD, "cluster": {"ps": ["a:1"]}}), "job 'ps' in 'cluster' is not used"),
    (json.dumps({**GOOD, "cluster": {"worker": "a:1"}}), "cluster 'worker' must be a non-empty list"),
    (json.dumps({**GOOD, "cluster": {"worker": ["a:1", "b"]}}), "entry 'b' is not a \"host:port\""),
    (json.dumps({**GOOD, "cluster": {"worker": ["a:1", "a:1"]}}), "listed twice"),
    (json.dumps({"cluster": GOOD["cluster"]}), "'task' is missing"),
    (json.dumps({**GOOD, "task": {"type": "chief", "index": 0}}), "task type 'chief' is not a job"),
    (json.dumps({**GOOD, "task": {"type": "worker", "index": 2}}),
     "task index 2 must be an integer from 0 to 1"),
])
def test_a_bad_tf_config_is_a_one_line_error(monkeypatch, tf_config, message):
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError) as info:
        cluster.cluster_resolver()
    text = str(info.value)
    assert text.startswith("TF_CONFIG: ") and message in text and "\n" not in text
    assert text.endswith("see README, 'Scaling out'.")


def test_a_bad_tf_config_stops_the_run_before_anything_is_written(workdir, monkeypatch, capsys):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker"}}')
    code, log_dir = run_in_process(stage_i_main, "bad")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and log_dir is None and not os.path.exists("ckt_logs")
    assert err == ["error: TF_CONFIG: task index None must be an integer from 0 to 0 (the 'worker' job "
                   "has 1 task(s)); see README, 'Scaling out'."]


def test_evaluation_runs_in_one_process(workdir, monkeypatch, capsys):
    monkeypatch.setenv("TF_CONFIG", json.dumps(GOOD))
    code, _ = run_in_process(stage_ii_main, "eval", **{"TRAIN.FLAG": False, "TRAIN.PRETRAINED_MODEL": "x"})
    assert code == 2 and not os.path.exists("ckt_logs")
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: TRAIN.FLAG is False (evaluation), which runs in one process, but this process is a "
        "worker of a cluster (TF_CONFIG or a SLURM step of several tasks): unset TF_CONFIG, or run it "
        "outside srun."]


def test_tf_config_and_slurm_steps_name_the_cluster(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps(GOOD))
    resolver = cluster.cluster_resolver()
    assert resolver.cluster_spec().as_dict() == GOOD["cluster"]
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)
    monkeypatch.delenv("TF_CONFIG")
    for name in [n for n in os.environ if n.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    assert cluster.cluster_resolver() is None  # not under SLURM: one process
    monkeypatch.setenv("SLURM_NTASKS", "2")  # inside an allocation (salloc) but not a step of srun
    assert cluster.cluster_resolver() is None
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # a step of one task
    assert cluster.cluster_resolver() is None
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "3")  # srun -N 2 -n 3: two tasks on node07, one on node08
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[07-08]")
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "2,1")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    resolver = cluster.cluster_resolver(gpus_present=False)
    port = cluster.SLURM_PORT_BASE + cluster.SLURM_PORTS_PER_JOB * 4242
    assert resolver.cluster_spec().as_dict() == {
        "worker": [f"node07:{port}", f"node07:{port + 1}", f"node08:{port}"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "2(x")
    with pytest.raises(ConfigError, match=r"^SLURM: cannot resolve the cluster of this job step"):
        cluster.cluster_resolver(gpus_present=False)


# -- two worker processes ---------------------------------------------------------

@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The chief's folder (the test's current directory) with a tiny dataset
    for both stages; worker 1 runs in w1/ with its own TMPDIR."""
    monkeypatch.chdir(tmp_path)
    write_tiny_dataset("data", stage_ii=True)
    for name in ("w1", "tmp0", "tmp1"):
        os.mkdir(name)
    return tmp_path


@pytest.fixture
def processes():
    """Worker processes a test started: all killed at its end, whatever happened."""
    started = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def cluster_config(name, **overrides):
    """A tiny config (absolute paths: the workers run in different folders)."""
    return os.path.abspath(write_config(f"{name}.yml", tiny_train_config(
        DATA_DIR=os.path.abspath("data"), **overrides)))


def start_workers(processes, name, stage, cfg, worker_command=None, onednn=("1", "0")):
    """The chief (worker 0) in the current folder and worker 1 in w1/, as two
    processes of one TF_CONFIG cluster on 127.0.0.1; ``worker_command``
    replaces worker 1's script and arguments.  Each worker runs with its own
    TensorFlow CPU kernels (``onednn``: TF_ENABLE_ONEDNN_OPTS of each), so
    every run here covers both kernel sets, as a cluster of two kinds of CPU
    would.  Returns their output files."""
    ports = free_ports(2)
    outputs = []
    for index, folder in enumerate((".", "w1")):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                     "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), CUDA_VISIBLE_DEVICES="",
                   TMPDIR=os.path.abspath(f"tmp{index}"), PYTHONUNBUFFERED="1",
                   TF_ENABLE_ONEDNN_OPTS=onednn[index])
        command = [RUN_EXP[stage], "--cfg", cfg]
        if index == 1 and worker_command:
            command = worker_command
        output = os.path.abspath(f"{name}.{index}.out")
        with open(output, "w") as out:
            processes.append(subprocess.Popen([sys.executable, *command], cwd=folder, env=env,
                                              stdout=out, stderr=subprocess.STDOUT))
        outputs.append(output)
    return outputs


def wait_all(processes, outputs):
    """Wait for the processes (killed by the ``processes`` fixture if they
    take longer than WORKER_LIMIT); return their exit codes and outputs."""
    deadline = time.monotonic() + WORKER_LIMIT
    codes = [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in processes]
    return codes, [open(o).read() for o in outputs]


def chief_run_folders():
    return sorted(glob.glob("ckt_logs/tiny/*"))


def file_names(folder):
    """The files of a run folder, the event file's machine-specific name left out."""
    return sorted("events" if n.startswith("events.out.tfevents.") else n for n in os.listdir(folder))


def assert_worker_left_nothing():
    assert os.listdir("w1") == [] and os.listdir("tmp1") == []


def adam_travel(steps, beta1=0.5, beta2=0.999):
    """How far, in learning rates, ``steps`` Adam updates (the optimizer's
    betas) can move a weight whatever the gradients: step t's bias-corrected
    m / sqrt(v) is a weighted sum of the gradients over the root of a
    weighted sum of their squares, at most sqrt(sum w_i^2 / u_i) by
    Cauchy-Schwarz (1 for the first step, 1.054 for the second with these
    betas: more than lr; epsilon only shrinks it)."""
    total = 0.0
    for t in range(1, steps + 1):
        ages = np.arange(t)[::-1]  # of gradients 1..t at step t
        w = (1 - beta1) * beta1 ** ages / (1 - beta1 ** t)
        u = (1 - beta2) * beta2 ** ages / (1 - beta2 ** t)
        total += np.sqrt(np.sum(w ** 2 / u))
    return total


def assert_like_one_process(single, multi, steps, close=0.98, stats_atol=1e-5, means=True,
                            updated_before_last_pass=(), after_update_atol=1e-3):
    """Snapshots of a single-process and a two-worker run after ``steps``
    iterations (see the module docstring): counters equal; every weight
    within the Adam bound of the steps; a fraction ``close`` of the weight
    elements within lr / 2; batch-norm statistics within ``stats_atol``
    (those of the networks ``updated_before_last_pass``, whose last pass ran
    with updated weights, within ``after_update_atol``) and the epoch means
    within LOSS_RTOL (None, False: not compared)."""
    a, b = tf.train.load_checkpoint(single), tf.train.load_checkpoint(multi)

    def variables(reader):
        return sorted(n for n in reader.get_variable_to_shape_map()
                      if "OBJECT_GRAPH" not in n and "save_counter" not in n)

    names = variables(a)
    assert names == variables(b)
    weight_diffs = []
    bound = 2 * adam_travel(steps) * LR
    for name in names:
        x, y = a.get_tensor(name), b.get_tensor(name)
        if x.dtype.kind != "f":  # counters, optimizer step counts
            assert np.array_equal(x, y), name
        elif name.startswith("epoch_means/") and name.split("/")[2] == "total" and means:
            # The running sums are stored summed over the replicas; their ratio
            # (the epoch mean) is what they stand for.
            count = name.replace("/total/", "/count/")
            np.testing.assert_allclose(y / b.get_tensor(count), x / a.get_tensor(count), rtol=LOSS_RTOL,
                                       err_msg=name)
        elif "/moving_" in name and stats_atol is not None:  # batch-norm statistics
            diff = np.abs(x - y).max()
            if "fc_bn/moving_mean/" in name:
                atol = bound
            elif name.split("/")[0] in updated_before_last_pass:
                atol = after_update_atol
            else:
                atol = stats_atol
            assert diff <= atol, (name, diff)
        elif "optimizer/_trainable_variables/" in name:  # the weights (saved under their optimizer)
            diff = np.abs(x - y)
            # two runs stepping apart, plus the float32 rounding of the
            # weights each step lands on
            rounding = steps * (np.spacing(np.abs(x)) + np.spacing(np.abs(y)))
            assert np.all(diff <= bound + rounding), (name, diff.max())
            weight_diffs.append(diff.ravel())
    fraction = np.mean(np.concatenate(weight_diffs) <= LR / 2)
    if close is not None:
        assert fraction >= close, fraction
    return fraction


def assert_same_losses(single_dir, multi_dir, tags, steps):
    """The two-worker run logged the losses the single process logged at
    iterations ``steps``: the D losses of iteration 1 (same initial weights,
    same global batch, no update yet) to float32 rounding; the rest, computed
    after an update (G's come after the iteration's D update, whose Adam steps
    on near-zero gradients take the sign of rounding noise), to LOSS_RTOL."""
    a, b = summary_values(single_dir), summary_values(multi_dir)
    for tag in tags:
        expected, logged = dict(a[tag]), dict(b[tag])
        assert set(steps) <= set(logged), (tag, sorted(logged))
        before_any_update = "d_loss" in tag
        for step in steps:
            rtol = 1e-5 if step == 1 and before_any_update else LOSS_RTOL
            np.testing.assert_allclose(logged[step], expected[step], rtol=rtol,
                                       err_msg=f"{tag} at iteration {step}")


PREVIEWS = {2: ("hr_fake_test.jpg", "hr_fake_train.jpg", "lr_fake_test.jpg", "lr_fake_train.jpg", "test.txt")}

# 12 training images, global batch 4 (2 per worker): 3 iterations per epoch
STAGE_I = {"TRAIN.MAX_EPOCH": 2, "TRAIN.SNAPSHOT_INTERVAL": 4}


def test_two_stage_i_workers_killed_restarted_end_like_one_process(workdir, processes, capsys):
    # 1. Two workers from scratch; worker 1 stops after iteration 5 (the
    #    chief waits for it in iteration 6) and is killed.
    cfg = cluster_config("mw", **STAGE_I)
    ready = os.path.abspath("w1.ready")
    outputs = start_workers(processes, "first", 1, cfg,
                            worker_command=[FAULT_SCRIPT, "1", ready, "after-step", "5", "--", "--cfg", cfg])
    deadline = time.monotonic() + WORKER_LIMIT
    while not os.path.exists(ready):
        assert processes[1].poll() is None and time.monotonic() < deadline, open(outputs[1]).read()[-3000:]
        time.sleep(0.1)
    processes[1].kill()
    killed = time.monotonic()
    code = processes[0].wait(timeout=LOST_WORKER_LIMIT)
    stopped_after = time.monotonic() - killed
    (first_dir,) = chief_run_folders()
    out = open(outputs[0]).read()
    assert code == 2 and stopped_after < LOST_WORKER_LIMIT
    last = out.strip().splitlines()[-1]
    snapshot = os.path.join(first_dir, "model-4")
    assert re.fullmatch(
        r"error: training stopped at iteration 5: (worker /job:worker/replica:0/task:1 stopped "
        r"\(no heartbeat\)|the connection to worker /job:worker/replica:0/task:1 broke)\. Restart every "
        rf"worker\. The last good snapshot is {re.escape(snapshot)}; resume from it with "
        rf"TRAIN\.PRETRAINED_MODEL: {re.escape(snapshot)}\.", last), last
    assert snapshots(first_dir) == [4]
    # Killed, worker 1 could not remove its temporary folder (nor could
    # TensorFlow remove its autograph modules); it wrote nothing else.
    (left,) = [n for n in os.listdir("tmp1") if not n.startswith("__autograph_generated_file")]
    assert left.startswith("stackgan-worker-") and os.listdir("w1") == []
    shutil.rmtree("tmp1")
    os.mkdir("tmp1")
    print(f"chief stopped {stopped_after:.1f} s after worker 1 was killed")

    # 2. Both restarted from the chief's folder: they resume at iteration 4
    #    and train to the end.
    processes.clear()
    resume = cluster_config("mw_resume", **STAGE_I, **{"TRAIN.PRETRAINED_MODEL": os.path.abspath(first_dir)})
    codes, outs = wait_all(processes, start_workers(processes, "resumed", 1, resume))
    assert codes == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    for text in outs:
        assert "Training from iteration 4 (epoch 1, batch 1)" in text
    assert "task worker:0 of 2 workers (the chief, writes the outputs)" in outs[0]
    assert "task worker:1 of 2 workers (writes no outputs)" in outs[1]
    assert "Model saved in file" not in outs[1]
    (resumed_dir,) = set(chief_run_folders()) - {first_dir}
    assert snapshots(resumed_dir) == [6]
    assert_worker_left_nothing()

    # 3. One process, the same config from scratch: the same outputs, the same
    #    losses and weights (to the all-reduce's rounding).
    capsys.readouterr()
    code, single_dir = run_in_process(stage_i_main, "single", DATA_DIR=os.path.abspath("data"), **STAGE_I)
    assert code == 0 and snapshots(single_dir) == [4, 6]
    assert file_names(resumed_dir) == [n for n in file_names(single_dir) if not n.startswith("model-4.")]
    final = assert_like_one_process(os.path.join(single_dir, "model-6"), os.path.join(resumed_dir, "model-6"),
                                    6)
    middle = assert_like_one_process(os.path.join(single_dir, "model-4"), snapshot, 4)
    print(f"weight elements within lr / 2: {middle:.4f} after 4 iterations, {final:.4f} after 6")
    tags = ("d_loss", "d_loss_real", "d_loss_wrong", "d_loss_fake", "g_loss", "g_loss_kl_loss")
    assert_same_losses(single_dir, first_dir, tags, range(1, 6))
    assert_same_losses(single_dir, resumed_dir, tags, (5, 6))
    assert [v for _, v in summary_values(resumed_dir)["g_learning_rate"]] == pytest.approx([1e-4, 1e-4])


def test_two_stage_ii_workers_train_like_one_process_and_stop_together(workdir, processes):
    # Worker 1 receives SIGTERM after iteration 1: both stop after iteration
    # 2, the chief saves model-2 and both exit 143.
    settings = {**STAGE_II, "TRAIN.MAX_EPOCH": 1, "TRAIN.SNAPSHOT_INTERVAL": 1}
    cfg = cluster_config("mw2", **settings)
    signalled = os.path.abspath("w1.signalled")
    outputs = start_workers(processes, "stage2", 2, cfg, worker_command=[
        FAULT_SCRIPT, "2", signalled, "signal-after-step", "1", "--", "--cfg", cfg], onednn=("0", "1"))
    codes, outs = wait_all(processes, outputs)
    assert codes == [143, 143], outs[0][-3000:] + outs[1][-3000:]
    # One choice for every worker, whatever each one's kernels: XLA cannot
    # compile the step's all-reduce on CPUs.
    for out in outs:
        assert "Training step: XLA off (TRAIN.XLA 'auto'), precision float32" in out
    (multi_dir,) = glob.glob("ckt_logs/tiny/stageII_*")
    assert "another worker received a signal: stopping after iteration 2" in outs[0]
    assert "SIGTERM received: stopping after iteration 2" in outs[1]
    assert (f"Stopped by SIGTERM at iteration 2; resume with TRAIN.PRETRAINED_MODEL: "
            f"{os.path.join(multi_dir, 'model-2')}") in outs[0]
    assert snapshots(multi_dir) == [1, 2]
    assert_worker_left_nothing()
    code, single_dir = run_in_process(stage_ii_main, "single2", DATA_DIR=os.path.abspath("data"), **settings)
    assert code == 0 and snapshots(single_dir) == [1, 2, 3]
    # stopped before the end of the epoch: no previews yet
    assert file_names(multi_dir) == [n for n in file_names(single_dir)
                                     if not n.startswith("model-3.") and n not in PREVIEWS[2]]
    # After one iteration from the same weights: all but the elements whose
    # exact gradient is ~0 (Adam steps them by +-lr on rounding noise).
    first = assert_like_one_process(os.path.join(single_dir, "model-1"), os.path.join(multi_dir, "model-1"),
                                    1, close=0.95, updated_before_last_pass=("hr_discriminator",))
    # A free step more: Stage-II amplifies those flips fast (86% of the
    # elements within lr / 2 after 3 iterations, also with two replicas in
    # one process), so only the Adam bound holds for every element.
    second = assert_like_one_process(os.path.join(single_dir, "model-2"), os.path.join(multi_dir, "model-2"),
                                     2, close=None, stats_atol=None, means=False)
    print(f"weight elements within lr / 2: {first:.4f} after 1 iteration, {second:.4f} after 2")
    assert_same_losses(single_dir, multi_dir, ("hr_d_loss", "hr_g_loss", "hr_d_loss_real", "hr_g_loss_fake"),
                       (1,))


def test_a_worker_that_stops_stepping_is_named_and_every_worker_stops(workdir, processes):
    # Worker 1 hangs after iteration 5 (alive, heartbeats going on): the
    # chief, waiting for it in iteration 6, gives up after
    # CLUSTER.STEP_TIMEOUT with one line naming it and the last snapshot.
    timeout = 8
    cfg = cluster_config("hang", **STAGE_I, **{"CLUSTER.STEP_TIMEOUT": timeout})
    ready = os.path.abspath("w1.ready")
    outputs = start_workers(processes, "hang", 1, cfg,
                            worker_command=[FAULT_SCRIPT, "1", ready, "after-step", "5", "--", "--cfg", cfg])
    deadline = time.monotonic() + WORKER_LIMIT
    while not os.path.exists(ready):
        assert processes[1].poll() is None and time.monotonic() < deadline, open(outputs[1]).read()[-3000:]
        time.sleep(0.1)
    hung = time.monotonic()
    code = processes[0].wait(timeout=timeout + LOST_WORKER_LIMIT)
    stopped_after = time.monotonic() - hung
    (run_dir,) = chief_run_folders()
    snapshot = os.path.join(run_dir, "model-4")
    last = open(outputs[0]).read().strip().splitlines()[-1]
    assert code == 2 and timeout <= stopped_after < timeout + LOST_WORKER_LIMIT, (code, stopped_after)
    assert last == (
        f"error: training stopped at iteration 5: worker /job:worker/replica:0/task:1 stopped stepping "
        f"(alive, but no training step for {timeout} s; CLUSTER.STEP_TIMEOUT sets the wait). Restart every "
        f"worker. The last good snapshot is {snapshot}; resume from it with TRAIN.PRETRAINED_MODEL: "
        f"{snapshot}."), last
    # The hung worker's own watchdog ends it too, naming itself.
    assert processes[1].wait(timeout=LOST_WORKER_LIMIT) == 2
    assert ("error: training stopped at iteration 4: worker /job:worker/replica:0/task:1 (this one) "
            "stopped stepping") in open(outputs[1]).read()
    assert snapshots(run_dir) == [4]
    print(f"chief stopped {stopped_after:.1f} s after worker 1 hung")


def test_start_up_is_bounded_and_interruptible(workdir, processes):
    # Only the chief of a two-worker cluster starts: it gives up after
    # CLUSTER.STARTUP_TIMEOUT naming the missing worker; started again, a
    # SIGTERM ends it at once.  Neither writes anything.
    cfg = cluster_config("alone", **STAGE_I, **{"CLUSTER.STARTUP_TIMEOUT": 3})
    for attempt in ("timeout", "signal"):
        processes.clear()
        (output, _) = start_workers(processes, attempt, 1, cfg, worker_command=[
            "-c", "import time; time.sleep(600)"])  # worker 1: a process that never joins
        processes[1].kill()
        if attempt == "signal":
            deadline = time.monotonic() + WORKER_LIMIT
            while "waiting for the cluster's workers to start" not in open(output).read():
                assert processes[0].poll() is None and time.monotonic() < deadline, open(output).read()
                time.sleep(0.1)
            processes[0].send_signal(signal.SIGTERM)
            signalled = time.monotonic()
        code = processes[0].wait(timeout=WORKER_LIMIT)
        lines = open(output).read().strip().splitlines()
        if attempt == "timeout":
            assert code == 2 and lines[-1].startswith(
                "error: start-up: the chief (127.0.0.1:") and "waited 3 s for task worker:1 (127.0.0.1:" \
                in lines[-1] and lines[-1].endswith("Nothing was written yet."), lines[-1]
        else:
            assert code == 143 and time.monotonic() - signalled < 5
            assert lines[-1] == ("stopped by SIGTERM while waiting for the other workers to start; nothing "
                                 "was written.")
        assert not os.path.exists("ckt_logs")
