"""One side of ``misc/benchmark.py --baseline``: a tree's own training step,
run one timed iteration at a time on request.

    python misc/benchmark_worker.py ROOT [options of ROOT's misc/benchmark.py]

ROOT is the repository whose code is timed: this working tree, or a commit
extracted by ``benchmark.py``.  Everything is built by ROOT's own
``misc/benchmark.py`` (its synthetic data, input pipeline and step, XLA as
its trainer's ``fit`` would use it), so each side runs what that version
trains with.  Only functions every version since the benchmark's first has
are used.

Protocol: the worker answers on its standard output (whatever the code
prints goes to standard error instead): one JSON line when it is built and
warmed up, then for every ``step`` line it reads one line ``<seconds of the
step> <seconds waiting for the batch>``; ``quit`` ends it with a JSON line of
final figures.
"""

import json
import os
import sys


def main(argv):
    root, options = os.path.abspath(argv[0]), argv[1:]
    answer = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by the code under test goes to stderr
    sys.stdout = sys.stderr
    sys.path.insert(0, root)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:  # before TensorFlow, in the trees that have it (its start-up lines follow that level)
        import misc.startup  # noqa: F401
    except ImportError:
        pass

    from misc import benchmark, experiment

    args = benchmark.parse_args(options)
    config = benchmark.load_config(args)
    stage = args.stage or benchmark.default_stage(config)
    made = experiment.make_strategy(args.gpu)
    # Versions before the step choices returned the strategy alone; the
    # trainer makes this machine's choices itself (one process).
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
    first, _ = benchmark.timed_step(step, iterator, key)
    for _ in range(args.warmup - 1):
        benchmark.timed_step(step, iterator, key)
    answer.write(json.dumps({"first_step_s": first, "xla": jit, "batch_size": config.TRAIN.BATCH_SIZE,
                             "stage": stage, "root": root}) + "\n")
    for line in sys.stdin:
        if line.strip() == "step":
            seconds, waited = benchmark.timed_step(step, iterator, key)
            answer.write(f"{seconds!r} {waited!r}\n")
        else:
            break
    answer.write(json.dumps({"peak_host_memory_mib": benchmark.peak_host_mib()}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
