"""misc/commands/convert_checkpoint.py as a careless or hostile user runs it (issue 24).

IN = OUT is refused up front however it is spelled (the prefix itself, a
relative path through '..', a link to its folder, the folder holding it),
and so is an OUT_DIR that is a file or a non-empty folder; the input is never
touched.  The output appears complete or not at all: a conversion killed with
SIGKILL leaves only a temporary folder, which the next conversion to the same
OUT_DIR removes; one stopped by Ctrl-C removes its own and exits 130.
"""

import os
import signal
import subprocess
import sys

import pytest
import yaml

from fault_points import kill, one_line_error, start_until_ready
from golden_support import tiny_config, unpack_checkpoint
from misc.commands import convert_checkpoint

WRITTEN = ["checkpoint", convert_checkpoint.INFO_FILE, convert_checkpoint.WEIGHTS_FILE,
           "model-100.data-00000-of-00001", "model-100.index"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The tiny reference Stage-I checkpoint (a V2 prefix) and its config."""
    root = tmp_path_factory.mktemp("convert")
    prefix = unpack_checkpoint("stageI", "v2", str(root / "reference"))
    c = tiny_config()
    cfg = root / "tiny.yml"
    cfg.write_text(yaml.safe_dump({"Z_DIM": c.Z_DIM, "GAN": {"EMBEDDING_DIM": c.GAN.EMBEDDING_DIM,
                                                            "GF_DIM": c.GAN.GF_DIM, "DF_DIM": c.GAN.DF_DIM}}))
    return prefix, str(cfg)


def test_in_equal_out_and_unusable_out_dirs_are_refused_up_front(source, tmp_path, capsys, monkeypatch):
    prefix, cfg = source
    folder = os.path.dirname(prefix)
    before = sorted(os.listdir(folder))
    monkeypatch.chdir(tmp_path)
    os.symlink(folder, "link_to_the_input_folder")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    relative = os.path.relpath(prefix, tmp_path)
    cases = [
        (prefix, "is the checkpoint"),
        (os.path.join(os.path.dirname(relative), "..", os.path.basename(folder), os.path.basename(prefix)),
         "is the checkpoint"),
        (folder, "or holds it"),
        (os.path.join("link_to_the_input_folder", os.path.basename(prefix)), "is the checkpoint"),
        ("link_to_the_input_folder", "or holds it"),
        ("a_file", "exists and is not a folder"),
        ("full", "exists and is not empty"),
        (os.path.join("a_file", "out"), "a_file is not a folder"),
    ]
    for out, message in cases:
        err = one_line_error(convert_checkpoint.main, [prefix, out, "--cfg", cfg], capsys)
        assert f"OUT_DIR {out}: " in err and message in err, (out, err)
    err = one_line_error(convert_checkpoint.main, [prefix + ".index", "fresh", "--cfg", cfg], capsys)
    assert "one of the files of the checkpoint" in err and "give the CHECKPOINT argument the" in err
    assert sorted(os.listdir(folder)) == before
    assert sorted(os.listdir(tmp_path)) == ["a_file", "full", "link_to_the_input_folder"]
    assert os.listdir(tmp_path / "full") == ["notes.txt"]


HANG_IN_THE_WEIGHTS = """
import sys, time
from misc.evaluation.sampling import StackGANGenerator

def write_part_then_hang(self, path, *args, **kwargs):
    with open(path, "wb") as f:
        f.write(b"\\x89HDF part of the weights")
    open(sys.argv[1], "w").close()
    time.sleep(600)

StackGANGenerator.save_weights = write_part_then_hang
from misc.commands import convert_checkpoint
from misc.commands.common import run_main
run_main(convert_checkpoint.main, sys.argv[2:])
"""


def start_conversion(ready, argv):
    return start_until_ready([sys.executable, "-c", HANG_IN_THE_WEIGHTS, str(ready), *argv], ready,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_the_output_appears_complete_or_not_at_all(source, tmp_path):
    prefix, cfg = source
    killed, interrupted = tmp_path / "killed", tmp_path / "interrupted"
    children = {out: start_conversion(tmp_path / f"{out.name}.ready", [prefix, str(out), "--cfg", cfg])
                for out in (killed, interrupted)}
    kill(children[killed])
    children[interrupted].send_signal(signal.SIGINT)
    children[interrupted].wait(timeout=120)
    assert children[interrupted].returncode == 130, children[interrupted].stderr.read()
    names = sorted(os.listdir(tmp_path))
    # nothing at either OUT_DIR; the killed run's temporary folder holds its partial files
    (leftover,) = [n for n in names if n.startswith(".tmp-")]
    assert leftover.endswith("-killed") and "killed" not in names and "interrupted" not in names
    assert convert_checkpoint.WEIGHTS_FILE in os.listdir(tmp_path / leftover)

    result = convert_checkpoint.main([prefix, str(killed), "--cfg", cfg])
    assert sorted(os.listdir(killed)) == WRITTEN and result["native"] == str(killed / "model-100")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    with pytest.raises(convert_checkpoint.WriteError, match="exists and is not empty"):
        convert_checkpoint.main([prefix, str(killed), "--cfg", cfg])
