"""Multi-worker start-up and liveness, without training (misc/training/cluster.py).

Before TensorFlow starts its own cluster, the workers meet in plain Python
(``rendezvous``): the wait is bounded, a busy port, a duplicate task, a
worker with another config or a chief that never comes is one line naming
the address, the task or the key, and every worker takes the chief's step
choices.  Here the workers are threads of this process on 127.0.0.1 (the
two-process runs are in test_multiworker.py).  Also: TF_CONFIG ports and
SLURM variables are validated, and the watchdog's diagnosis names the
worker that stopped stepping.
"""

import json
import socket
import threading

import pytest

from misc.config import ConfigError
from misc.training import cluster

CONFIG = {"TRAIN.BATCH_SIZE": 64, "GAN.GF_DIM": 128}
CHIEF_CHOICES = {"xla": False, "precision": "float32"}


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def spec_of(count):
    return {"worker": [f"127.0.0.1:{p}" for p in free_ports(count)]}


def meet(spec, hellos, timeout=20):
    """Run ``rendezvous`` for each task of ``hellos`` ({task: hello}) in its
    own thread; returns {task: result or the exception raised}."""
    results = {}

    def run(task, hello):
        try:
            results[task] = cluster.rendezvous(spec, task, hello, timeout, "Nothing was written yet.")
        except Exception as exc:  # the test inspects it
            results[task] = exc

    threads = [threading.Thread(target=run, args=item) for item in hellos.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout + 10)
    assert not any(t.is_alive() for t in threads)
    return results


def hello(choices=CHIEF_CHOICES, **config):
    return {"config": {**CONFIG, **config}, "choices": choices}


def one_line(exc, kind):
    assert isinstance(exc, kind), exc
    text = str(exc)
    assert "\n" not in text
    return text


def test_workers_meet_and_take_the_chiefs_choices():
    spec = spec_of(3)
    mine = {"xla": True, "precision": "mixed_bfloat16"}  # what workers 1 and 2 would choose alone
    results = meet(spec, {"worker:0": hello(), "worker:1": hello(mine), "worker:2": hello(mine)})
    assert results == {task: CHIEF_CHOICES for task in ("worker:0", "worker:1", "worker:2")}
    # The chief's port is free again for TensorFlow's server.
    cluster.check_port_free(spec["worker"][0], "worker:0")


def test_a_worker_with_another_config_stops_every_worker():
    results = meet(spec_of(2), {"worker:0": hello(), "worker:1": hello(**{"TRAIN.BATCH_SIZE": 32})})
    expected = ("task worker:1's config differs from the chief's (TRAIN.BATCH_SIZE is 32 there, 64 on "
                "the chief); start every worker with the same config.")
    assert one_line(results["worker:0"], ConfigError) == expected
    assert one_line(results["worker:1"], ConfigError) == expected


def test_two_workers_with_the_same_index_are_named():
    spec = spec_of(3)
    results = {}
    chief = threading.Thread(target=lambda: results.update(meet(spec, {"worker:0": hello()})))
    chief.start()
    # Two processes both started as task worker:1 (on two machines: the
    # port check cannot see it, the chief can).
    twins = [threading.Thread(target=lambda i=i: results.update(
        {f"twin{i}": _follow_as(spec, "worker:1")})) for i in range(2)]
    for thread in twins:
        thread.start()
    for thread in (chief, *twins):
        thread.join(40)
    text = one_line(results["worker:0"], ConfigError)
    assert text.startswith("TF_CONFIG: two workers say they are task worker:1 (from 127.0.0.1 and "
                           "127.0.0.1); give every worker its own task index")
    assert one_line(results["twin0"], ConfigError) == text == one_line(results["twin1"], ConfigError)


def _follow_as(spec, task):
    tasks, leader = cluster.task_addresses(spec)
    try:
        return cluster._follow(tasks, leader, task, hello(), 20, "")
    except Exception as exc:
        return exc


def test_the_wait_for_the_other_workers_is_bounded():
    spec = spec_of(2)
    results = meet(spec, {"worker:0": hello()}, timeout=1)
    assert one_line(results["worker:0"], cluster.ClusterError) == (
        f"start-up: the chief ({spec['worker'][0]}) waited 1 s for task worker:1 ({spec['worker'][1]}) "
        "to connect. Start every worker with the same TF_CONFIG (CLUSTER.STARTUP_TIMEOUT sets the wait). "
        "Nothing was written yet.")
    results = meet(spec, {"worker:1": hello()}, timeout=1)
    assert one_line(results["worker:1"], cluster.ClusterError) == (
        f"start-up: task worker:1 could not reach the chief at {spec['worker'][0]} within 1 s. Start the "
        "chief (and every worker) with the same TF_CONFIG (CLUSTER.STARTUP_TIMEOUT sets the wait). "
        "Nothing was written yet.")


@pytest.mark.parametrize("task", ["worker:0", "worker:1"])
def test_a_busy_port_names_the_address(task):
    spec = spec_of(2)
    address = spec["worker"][int(task[-1])]
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cluster.port_of(address)))
        squatter.listen(1)
        results = meet(spec, {task: hello()}, timeout=5)
    assert one_line(results[task], ConfigError) == (
        f"TF_CONFIG: task {task}'s address {address} is in use on this machine (another program, or "
        f"another worker started as task {task}, listens on port {cluster.port_of(address)}); give every "
        "task its own free port; see README, 'Scaling out'.")


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "127.0.0.1:0"])
def test_ports_are_validated(address):
    text = json.dumps({"cluster": {"worker": ["127.0.0.1:2001", address]}, "task": {"type": "worker",
                                                                                   "index": 0}})
    with pytest.raises(ConfigError) as info:
        cluster.tf_config_cluster(text)
    assert str(info.value) == (f"TF_CONFIG: cluster 'worker' entry '{address}': the port must be from 1 to "
                               "65535; see README, 'Scaling out'.")


@pytest.mark.parametrize("variables, message", [
    ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "two"},
     "SLURM: SLURM_STEP_NUM_TASKS is 'two', expected an integer of at least 1"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "-2"}, "SLURM: SLURM_NTASKS is '-2', expected an integer"),
    ({"SLURM_PROCID": "one", "SLURM_STEP_NUM_TASKS": "2"}, "SLURM: SLURM_PROCID is 'one'"),
    ({"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "2"},
     "SLURM: SLURM_PROCID 2 is not a task of this step of 2 tasks"),
    ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_JOB_ID": "x1"}, "SLURM: SLURM_JOB_ID is 'x1'"),
])
def test_malformed_slurm_variables_are_one_line_errors(monkeypatch, variables, message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for name in [n for n in __import__("os").environ if n.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        cluster.cluster_resolver(gpus_present=False)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_the_workers_behind_the_others_are_the_stalled_ones():
    # (iterations finished, inside the next step)
    assert cluster.stalled_workers({"worker:0": (5, True), "worker:1": (4, True), "worker:2": (5, True)}) \
        == ["worker:1"]  # still in iteration 5, which the others finished
    assert cluster.stalled_workers({"worker:0": (5, True), "worker:1": (5, False)}) == ["worker:1"]
    assert cluster.stalled_workers({"worker:0": (5, True), "worker:1": (5, True)}) == []
    assert cluster.task_device("worker:1") == "/job:worker/replica:0/task:1"
