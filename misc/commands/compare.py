"""Time training settings, or git revisions, side by side: each side runs
the benchmark's step (misc/training/benchmark.py) in a process of its own,
and the sides alternate single iterations (A B, B A, ...), so all see the
same machine; it prints each side's median seconds per iteration and its
ratio to the first side's.  On a shared machine absolute times drift with
its load; ratios measured this way hold.

    python -m misc.commands.compare --cfg stageI/cfg/shapes.yml \\
        --side "TF_ENABLE_ONEDNN_OPTS=1 --xla off" --side "TF_ENABLE_ONEDNN_OPTS=0 --xla on" \\
        [--steps 20] [--warmup 3] [--stage 1|2] [--gpu 0] [--batch-size N] [--num-images N]
        [--embedding-dim D] [--data] [--json OUT]

A ``--side`` is shell words: ``NAME=VALUE`` sets an environment variable of
that side (e.g. TensorFlow's TF_ENABLE_ONEDNN_OPTS), ``@REV`` runs a git
revision of this repository instead of the working tree (extracted to a
temporary folder), and the rest are benchmark options of that side
(``--xla on``, ``--precision mixed``, ``--cfg old.yml``: a revision's
options must be ones its benchmark knows).  All sides hold their data and
networks at once.
"""

import json
import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile

from misc.commands import benchmark
from misc.commands.common import ArgumentParser, positive_int, run_main
from misc.config import ConfigError, load_config

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(REPOSITORY, "misc", "commands", "benchmark_worker.py")
# The benchmark options every side gets from this command's own.
SHARED_OPTIONS = ("--cfg", "--warmup", "--stage", "--gpu", "--batch-size", "--num-images", "--embedding-dim")


def parse_args(argv=None):
    parser = ArgumentParser(description="Time training settings or git revisions side by side, "
                                        "alternating single iterations.")
    parser.add_argument("--cfg", dest="cfg_file", required=True, help="YAML config file of every side")
    parser.add_argument("--side", dest="sides", action="append", required=True,
                        help='one side: "[@REV] [NAME=VALUE ...] [benchmark options]" (give two or more)')
    parser.add_argument("--steps", type=positive_int(), default=20, help="alternated rounds (default 20)")
    parser.add_argument("--warmup", type=positive_int(), default=3,
                        help="unmeasured steps per side first (default 3)")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=None)
    parser.add_argument("--gpu", default=None)
    parser.add_argument("--batch-size", type=positive_int(), default=None)
    parser.add_argument("--num-images", type=positive_int(), default=None)
    parser.add_argument("--embedding-dim", type=positive_int(), default=None)
    parser.add_argument("--data", action="store_true", help="the configured dataset, not synthetic data")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if len(args.sides) < 2:
        raise ConfigError("--side: give at least two sides to compare.")
    return args


def side_spec(text):
    """(revision or None, environment, benchmark options) of a --side."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"--side {text!r}: {exc}.") from None
    revision, env, options = None, {}, []
    for word in words:
        if word.startswith("@") and revision is None and not options:
            revision = word[1:]
        elif not options and "=" in word and word.split("=", 1)[0].isidentifier():
            name, value = word.split("=", 1)
            env[name] = value
        else:
            options.append(word)
    return revision, env, options


def shared_options(args):
    options = []
    for flag in SHARED_OPTIONS:
        value = getattr(args, "cfg_file" if flag == "--cfg" else flag[2:].replace("-", "_"))
        if value is not None:
            options += [flag, os.path.abspath(value) if flag == "--cfg" else str(value)]
    return options + (["--data"] if args.data else [])


def resolve_revision(ref, repository=REPOSITORY):
    """The commit hash of a git revision of this repository."""
    try:
        done = subprocess.run(
            ["git", "-C", repository, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
            capture_output=True, text=True, check=False)
    except OSError as exc:
        raise ConfigError(f"--side @{ref}: git is not available ({exc.strerror}).") from None
    if done.returncode != 0:
        raise ConfigError(f"--side @{ref}: not a commit of the git repository {repository}.")
    return done.stdout.strip()


def extract_revision(commit, destination, repository=REPOSITORY):
    """The files of ``commit`` (``git archive``) into ``destination``."""
    with subprocess.Popen(["git", "-C", repository, "archive", "--format=tar", commit],
                          stdout=subprocess.PIPE) as archive:
        with tarfile.open(fileobj=archive.stdout, mode="r|") as tar:
            tar.extractall(destination, filter="data")
    if archive.returncode != 0:
        raise ConfigError(f"--side @{commit}: git archive failed.")


class Worker:
    """A benchmark worker process (misc/commands/benchmark_worker.py) for one
    side."""

    def __init__(self, name, root, options, log_dir, env=None):
        self.name = name
        self.log_path = os.path.join(log_dir, f"side{len(os.listdir(log_dir))}.log")
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen([sys.executable, WORKER, root, *options], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1,
                                        env=env)
        self.info = None

    def read(self):
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            self.log.flush()
            with open(self.log_path, errors="replace") as f:
                tail = [t for t in f.read().strip().splitlines() if t.strip()][-1:]
            raise ConfigError(f"the benchmark of side {self.name!r} stopped (exit "
                              f"{self.process.returncode}): {tail[0] if tail else 'no output'}")
        return line

    def ready(self):
        self.info = json.loads(self.read())
        return self.info

    def step(self):
        self.process.stdin.write("step\n")
        seconds, waited = (float(v) for v in self.read().split())
        return seconds, waited

    def finish(self):
        self.process.stdin.write("quit\n")
        self.process.stdin.flush()
        final = json.loads(self.read())
        self.process.wait()
        return final

    def close(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


def alternate(sides, steps):
    """``steps`` rounds, one iteration of each side per round, the order
    reversed every other round; returns each side's step times."""
    times = {side.name: [] for side in sides}
    for index in range(steps):
        for side in (sides if index % 2 == 0 else sides[::-1]):
            times[side.name].append(side.step()[0])
    return times


def ratios(times, names):
    """Each side's median and its ratio to the first side's; also the
    median and range of the per-round ratios."""
    first = times[names[0]]
    out = {}
    for name in names:
        rounds = [a / b for a, b in zip(times[name], first)]
        out[name] = {"median_s": statistics.median(times[name]),
                     "ratio": statistics.median(times[name]) / statistics.median(first),
                     "round_ratio_median": statistics.median(rounds),
                     "round_ratio_min": min(rounds), "round_ratio_max": max(rounds)}
    return out


def load_average():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def check_side(text, options, args):
    """Parse a working-tree side's benchmark options as its worker will."""
    parsed, unknown = benchmark.parser(prog="python -m misc.commands.benchmark").parse_known_args(
        shared_options(args) + options)
    if unknown:
        raise ConfigError(f"--side {text!r}: {' '.join(unknown)} is not a benchmark option (see "
                          "python -m misc.commands.benchmark --help).")
    benchmark.run_config(parsed)


def main(argv=None):
    args = parse_args(argv)
    load_config(args.cfg_file)
    specs = [(text, *side_spec(text)) for text in args.sides]
    if len({text for text, *_ in specs}) != len(specs):
        raise ConfigError("--side: every side must differ.")
    for text, revision, _, options in specs:
        if revision is None:
            check_side(text, options, args)
    if args.json_out:
        from misc.data.atomic import check_writable

        check_writable(args.json_out, "--json")
    commits = {revision: resolve_revision(revision) for _, revision, _, _ in specs if revision}
    start_load = load_average()
    with tempfile.TemporaryDirectory(prefix="stackgan-compare-") as tmp:
        logs = os.path.join(tmp, "logs")
        os.mkdir(logs)
        roots = {}
        for revision, commit in commits.items():
            roots[revision] = os.path.join(tmp, commit)
            if not os.path.isdir(roots[revision]):
                extract_revision(commit, roots[revision])
        sides = []
        try:
            for text, revision, env, options in specs:
                sides.append(Worker(text, roots.get(revision, REPOSITORY), shared_options(args) + options,
                                    logs, env={**os.environ, **env}))
            start = {side.name: side.ready() for side in sides}
            times = alternate(sides, args.steps)
            final = {side.name: side.finish() for side in sides}
        finally:
            for side in sides:
                side.close()
    names = [text for text, *_ in specs]
    result = {"status": "ok", "cfg_file": args.cfg_file, "commits": commits, "rounds": args.steps,
              "load_average_1min_start": start_load, "load_average_1min_end": load_average(),
              "sides": {name: {**start[name], **final[name], "step_times": times[name]} for name in names},
              "comparison": ratios(times, names)}
    print(format_comparison(result))
    if args.json_out:
        from misc.data.atomic import write_text

        write_text(json.dumps(result, indent=2) + "\n", args.json_out)
    return result


def format_comparison(result):
    machine = next(iter(result["sides"].values())).get("machine", {})
    lines = ["StackGAN training benchmark, side by side",
             f"machine: {machine.get('cpu', '?')}, {machine.get('cpu_cores', '?')} cores; GPUs: "
             f"{', '.join(machine.get('gpus', [])) or 'none'}; TensorFlow {machine.get('tensorflow', '?')}; "
             f"load average {result['load_average_1min_start']} at the start, "
             f"{result['load_average_1min_end']} at the end",
             f"config: {result['cfg_file']}; medians of {result['rounds']} alternated iterations each, "
             "ratios to the first side:"]
    for name, side in result["sides"].items():
        c = result["comparison"][name]
        lines.append(f"  [{name}] {c['median_s']:.4g} s/iteration, ratio {c['ratio']:.3f} (per round: "
                     f"median {c['round_ratio_median']:.3f}, {c['round_ratio_min']:.3f}-"
                     f"{c['round_ratio_max']:.3f}); XLA {'on' if side['xla'] else 'off'}, batch "
                     f"{side['batch_size']}, first step {side['first_step_s']:.1f} s, peak host memory "
                     f"{side['peak_host_memory_mib']} MiB")
    return "\n".join(lines)


def cli(argv=None):
    run_main(main, argv)


if __name__ == "__main__":
    cli()
