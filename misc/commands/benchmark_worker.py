"""One side of ``python -m misc.commands.compare``: a tree's own training
step, run one timed iteration at a time on request.

    python misc/commands/benchmark_worker.py ROOT [ROOT's benchmark options]

ROOT is the repository whose code is timed: this working tree, or a git
revision extracted by compare.py.  Everything is built by ROOT's own
benchmark code (its synthetic data, input pipeline and step, XLA as its
trainer's ``fit`` would use it), so each side runs what that version trains
with: misc/training/benchmark.py's ``Session``, or in revisions before the
misc/ packages, misc/benchmark.py's functions (only those every version since
the benchmark's first has).

Protocol: the worker answers on its standard output (whatever the code
prints goes to standard error instead): one JSON line when it is built and
warmed up, then for every ``step`` line it reads one line ``<seconds of the
step> <seconds waiting for the batch>``; ``quit`` ends it with a JSON line of
final figures.
"""

import json
import os
import sys


def current_session(options):
    """(timed_step, facts) of a tree with misc/training/benchmark.py."""
    from misc.commands import benchmark as command
    from misc.commands.startup import start_tensorflow

    args = command.parse_args(options)
    start_tensorflow()
    from misc.training import benchmark

    session = command.session(args)
    facts = {"xla": bool(session.gan.jit_compile), "batch_size": session.config.TRAIN.BATCH_SIZE,
             "stage": session.stage, "machine": benchmark.machine_info()}
    return session.timed_step, benchmark.peak_host_mib, args.warmup, facts


def older_session(options):
    """(timed_step, facts) of a revision with misc/benchmark.py."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:  # before TensorFlow, in the revisions that have it (its start-up lines follow that level)
        import misc.startup  # noqa: F401
    except ImportError:
        pass
    from misc import benchmark, experiment

    args = benchmark.parse_args(options)
    config = benchmark.load_config(args)
    stage = args.stage or benchmark.default_stage(config)
    made = experiment.make_strategy(args.gpu)
    # Versions before the step choices returned the strategy alone.
    strategy = made[0] if isinstance(made, tuple) else made
    if args.data:
        split = benchmark.real_split(config, stage)
    else:
        split = benchmark.synthetic_split(args.num_images, stage, args.embedding_dim, seed=config.SEED)
    if hasattr(experiment, "build_stage_gan"):
        gan = experiment.build_stage_gan(config, stage, split.embedding_dim, strategy)
    else:  # the benchmark's first versions built the trainer themselves
        gan = benchmark.build_gan(config, stage, split.embedding_dim, strategy)
    jit = bool(gan.jit_compile)
    iterator = benchmark.distributed_batches(split, config, gan, strategy)
    step = benchmark.compiled_step(gan, strategy, jit)
    key = gan.epoch_log_keys[0]
    facts = {"xla": jit, "batch_size": config.TRAIN.BATCH_SIZE, "stage": stage,
             "machine": benchmark.machine_info()}
    return (lambda: benchmark.timed_step(step, iterator, key)), benchmark.peak_host_mib, args.warmup, facts


def main(argv):
    root, options = os.path.abspath(argv[0]), argv[1:]
    answer = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by the code under test goes to stderr
    sys.stdout = sys.stderr
    sys.path.insert(0, root)
    packaged = os.path.isfile(os.path.join(root, "misc", "training", "benchmark.py"))
    timed_step, peak_host_mib, warmup, facts = (current_session if packaged else older_session)(options)
    first, _ = timed_step()
    for _ in range(warmup - 1):
        timed_step()
    answer.write(json.dumps({"first_step_s": first, **facts, "root": root}) + "\n")
    for line in sys.stdin:
        if line.strip() == "step":
            seconds, waited = timed_step()
            answer.write(f"{seconds!r} {waited!r}\n")
        else:
            break
    answer.write(json.dumps({"peak_host_memory_mib": peak_host_mib()}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
