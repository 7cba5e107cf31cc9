"""data/generate_shapes.py's command line as a careless or hostile user runs
it (issue 24): counts, seed and --out are checked before anything is
written, with one line and exit code 2; a folder holding anything but a
shapes dataset is refused unless --force (and then only the dataset's own
files are replaced, and the folder is marked as a dataset of this script);
a generation killed mid-write is completed by the next run, which removes
the temporaries it left."""

import os
import subprocess
import sys

from fault_points import ROOT, kill, start_until_ready
from misc.commands.generate_shapes import cli
from misc.data.shapes import MARKER, required_files

SCRIPT = os.path.join(ROOT, "data", "generate_shapes.py")
TINY = ["--num-train", "2", "--num-test", "1"]


def run(*argv):
    """The command as its __main__ runs it, in this process (a child's
    start-up would cost more than the command); its exit code."""
    try:
        cli(list(argv))
    except SystemExit as exc:  # a one-line error, or an argument the parser refuses
        return exc.code
    return 0


def one_line_error(code, capsys):
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_arguments_and_targets_are_refused_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    os.mkfifo(tmp_path / "a_fifo")
    out = str(tmp_path / "new")
    cases = [
        (["--out", out, "--num-train", "0"], "--num-train 0: must be from 1 to 20,000"),
        (["--out", out, "--num-train", "-5"], "--num-train -5"),
        (["--out", out, "--num-test", "20001"], "--num-test 20001"),
        (["--out", out, "--num-train", "two"], "argument --num-train: invalid int value: 'two'"),
        (["--out", out, "--seed", "-1"], "--seed -1"),
        (["--out", str(tmp_path / "a_file")], "exists and is not a folder"),
        (["--out", str(tmp_path / "a_fifo")], "exists and is not a folder"),
        (["--out", str(tmp_path / "a_file" / "shapes")], "a_file is not a folder"),
    ]
    for argv, message in cases:
        assert message in one_line_error(run(*argv), capsys), argv
    assert sorted(os.listdir(tmp_path)) == ["a_fifo", "a_file"]
    # the script itself, as a user starts it
    result = subprocess.run([sys.executable, SCRIPT, "--out", out, "--num-test", "0"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and result.stderr == "error: --num-test 0: must be from 1 to 20,000 " \
                                                       "(test pictures).\n"
    assert sorted(os.listdir(tmp_path)) == ["a_fifo", "a_file"]


def test_another_dataset_is_refused_unless_forced_and_then_kept_beside(tmp_path, capsys):
    birds = tmp_path / "birds"
    (birds / "train").mkdir(parents=True)
    (birds / "train" / "304images.pickle").write_bytes(b"the birds' pictures")
    (birds / "CUB_200_2011").mkdir()
    err = one_line_error(run("--out", str(birds), *TINY), capsys)
    assert "holds files that are not part of a shapes dataset (CUB_200_2011, train)" in err
    assert "--force" in err
    assert sorted(os.listdir(birds)) == ["CUB_200_2011", "train"]
    assert (birds / "train" / "304images.pickle").read_bytes() == b"the birds' pictures"
    nested = tmp_path / "nested"  # a layout like ours, without the marker: not ours either
    (nested / "train").mkdir(parents=True)
    (nested / "train" / "filenames.pickle").write_bytes(b"names")
    assert "holds files that are not part of a shapes dataset (train)" in one_line_error(
        run("--out", str(nested), *TINY), capsys)

    assert run("--out", str(birds), *TINY, "--force") == 0
    assert all(os.path.isfile(p) for p in required_files(str(birds)))
    assert (birds / "CUB_200_2011").is_dir()
    # now marked as ours: generating again replaces the dataset's files only
    assert run("--out", str(birds), *TINY, "--seed", "1") == 0 and (birds / "CUB_200_2011").is_dir()
    legacy = tmp_path / "legacy"  # ours from before the marker, with a stray file
    assert run("--out", str(legacy), *TINY) == 0
    os.remove(legacy / MARKER)
    (legacy / "test" / "notes.txt").write_text("mine")
    err = one_line_error(run("--out", str(legacy), *TINY), capsys)
    assert f"({os.path.join('test', 'notes.txt')})" in err
    fresh = tmp_path / "fresh"
    assert run("--out", str(fresh), *TINY) == 0
    assert (fresh / MARKER).is_file()
    assert run("--out", str(fresh), *TINY, "--seed", "1", "--no-hr") == 0  # its own: regenerated


KILLED_WRITING_CLASS_IDS = """
import sys, time
import misc.data.shapes as generator
from misc.commands.generate_shapes import cli
from misc.data.atomic import atomic_open

dump = generator.safe_pickle.dump

def dump_or_hang(obj, path):
    if path.endswith("class_info.pickle"):
        with atomic_open(path) as f:
            f.write(b"half a pickle")
            f.flush()
            open(sys.argv[1], "w").close()
            time.sleep(600)
    dump(obj, path)

generator.safe_pickle.dump = dump_or_hang
cli(sys.argv[2:])
"""


def test_a_killed_generation_is_completed_by_the_next_run(tmp_path, capsys):
    out, ready = tmp_path / "shapes", tmp_path / "ready"
    kill(start_until_ready([sys.executable, "-c", KILLED_WRITING_CLASS_IDS, str(ready), "--out", str(out),
                            *TINY], ready, stdout=subprocess.DEVNULL))
    leftovers = [n for n in os.listdir(out / "train") if n.startswith(".tmp-")]
    assert len(leftovers) == 1 and not (out / "train" / "filenames.pickle").exists()
    assert run("--out", str(out), *TINY) == 0
    assert "Removed 1 temporary file(s)" in capsys.readouterr().out
    assert all(os.path.isfile(p) for p in required_files(str(out)))
    assert not [n for _, _, names in os.walk(out) for n in names if n.startswith(".tmp-")]
