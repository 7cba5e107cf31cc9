"""The documentation stays true to the code.

* Citations of docs/reference_quirks.md in the code point at sections that
  exist.
* README is a user's guide under MAX_README_LINES lines, and every command in
  its ```bash blocks still parses: each ``python`` line (backslash
  continuations joined) is mapped to its command module and the module's own
  argument parser is run on its arguments, in this process (no TensorFlow is
  started: the commands parse before they start it).  Placeholders such as
  ``<encoder>`` are ordinary values to a parser.
* Every command the package installs appears in README, README's test commands
  are the ones CI runs, and every repository path README or docs/ mentions in
  backticks, every relative link, exists.
"""

import argparse
import glob
import importlib
import os
import re
import shlex

import pytest

from misc.commands.common import ArgumentParser
from misc.config import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CITATION = re.compile(r"docs/reference_quirks\.md((?:#[\w-]+)?(?:, #[\w-]+)*)")

MAX_README_LINES = 400  # issue 20: README is a user's guide; research notes live in docs/
# The repository's scripts: the command module each runs, and the stage it fixes.
SCRIPTS = {
    "stageI/run_exp.py": ("misc.commands.train", 1),
    "stageII/run_exp.py": ("misc.commands.train", 2),
    "demo/demo.py": ("misc.commands.demo", None),
    "demo/embed.py": ("misc.commands.embed", None),
    "data/generate_shapes.py": ("misc.commands.generate_shapes", None),
    "data/build_dataset.py": ("misc.commands.build_dataset", None),
}
COMMANDS_PACKAGE = "misc.commands."
# `python -m` modules README runs that are tools, not commands of this project.
TOOLS = ("pytest", "pip", "venv")
# A command line README shows: optional VAR=value words, then the interpreter.
COMMAND_LINE = re.compile(r"^\s*(?:[A-Za-z_]\w*=\S*\s+)*python3?\s")
# Backticked words that name files of the repository (others name outputs,
# downloads or placeholders).
REPOSITORY_PATH = re.compile(r"^(?:stageI|stageII|misc|docs|demo|tests)/"
                             r"|^data/(?:generate_shapes|build_dataset)\.py$")
FENCE = re.compile(r"^ *```(\w*)\n(.*?)^ *```", re.M | re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def documents():
    """README and the docs/ pages, relative to ROOT."""
    pages = glob.glob(os.path.join(ROOT, "docs", "*.md"))
    return ["README.md"] + sorted(os.path.relpath(page, ROOT) for page in pages)


# -- docs/reference_quirks.md anchors -----------------------------------------

def cited_anchors():
    found = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.endswith((".py", ".md")):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    for match in CITATION.finditer(f.read()):
                        for anchor in re.findall(r"#([\w-]+)", match.group(1)):
                            found.setdefault(anchor, []).append(os.path.relpath(path, ROOT))
    return found


def test_every_cited_section_exists():
    anchors = set(re.findall(r'<a id="([\w-]+)"></a>', read("docs/reference_quirks.md")))
    cited = cited_anchors()
    assert {"q4", "q11", "q13", "q14", "names"} <= set(cited)  # the scan finds the code's citations
    missing = {a: files for a, files in cited.items() if a not in anchors}
    assert not missing, f"cited but not in docs/reference_quirks.md: {missing}"


# -- README's commands ---------------------------------------------------------

def bash_commands(text):
    """The ``python`` command lines of the ```bash blocks of ``text``, each
    with its backslash continuations joined."""
    lines = []
    for language, block in FENCE.findall(text):
        if language == "bash":
            lines += [line.strip() for line in re.sub(r"\\\n", " ", block).splitlines()
                      if COMMAND_LINE.match(line)]
    return lines


def command_of(line):
    """(module, stage, arguments) that a README command line runs; None for
    ``python -c`` and the tools' modules."""
    words = shlex.split(line, comments=True)
    while not words[0].startswith("python"):
        words.pop(0)  # VAR=value
    target, args = words[1], words[2:]
    if target == "-c":
        return None
    if target == "-m":
        module, args = args[0], args[1:]
        if module in TOOLS:
            return None
        assert module.startswith(COMMANDS_PACKAGE), (
            f"README: `{line}`: {module} is not a command (python -m {COMMANDS_PACKAGE}<name>)")
        return module, None, args
    assert target in SCRIPTS, f"README: `{line}`: {target} is not one of the scripts {sorted(SCRIPTS)}"
    module, stage = SCRIPTS[target]
    return module, stage, args


class Parsed(Exception):
    """What a command's ``main`` parsed, raised before it does any work."""


def parse(module_name, stage, args, monkeypatch):
    """Run the command's argument parsing on ``args``: its ``parse_args``,
    or, for a command that builds its parser inside ``main``, ``main`` up to
    the end of parsing."""
    module = importlib.import_module(module_name)
    if hasattr(module, "parse_args"):
        return module.parse_args(args, stage=stage) if stage else module.parse_args(args)

    def parse_then_stop(parser, arguments=None, namespace=None):
        raise Parsed(argparse.ArgumentParser.parse_args(parser, arguments, namespace))

    with monkeypatch.context() as patch, pytest.raises(Parsed) as parsed:
        patch.setattr(ArgumentParser, "parse_args", parse_then_stop)
        module.main(args)
    return parsed.value.args[0]


def check_parses(line, monkeypatch, capsys):
    """Fail, naming the line and the command's message, unless ``line`` parses."""
    command = command_of(line)
    if command is None:
        return None
    try:
        return parse(*command, monkeypatch)
    except SystemExit as exc:
        if exc.code not in (0, None):
            pytest.fail(f"README: `{line}` does not parse: {capsys.readouterr().err.strip()}")
    except UserError as exc:
        pytest.fail(f"README: `{line}` does not parse: {exc}")
    return None


README_COMMANDS = bash_commands(read("README.md"))


def test_readme_is_a_short_guide():
    lines = len(read("README.md").splitlines())
    assert lines < MAX_README_LINES, f"README.md has {lines} lines; move research notes to docs/"


@pytest.mark.parametrize("line", README_COMMANDS, ids=[line[:60] for line in README_COMMANDS])
def test_every_readme_command_parses(line, monkeypatch, capsys):
    check_parses(line, monkeypatch, capsys)


def test_readme_shows_every_installed_command():
    scripts = re.findall(r'^stackgan-[\w-]+ = "([\w.]+):cli"$', read("pyproject.toml"), re.M)
    assert len(scripts) >= 10  # the [project.scripts] table was found
    shown = {command[0] for command in map(command_of, README_COMMANDS) if command}
    assert set(scripts) <= shown, f"commands README does not show: {sorted(set(scripts) - shown)}"


def test_readme_test_commands_are_the_ones_ci_runs():
    section = read("README.md").split("\n## Tests\n", 1)[1]
    commands = FENCE.search(section).group(2).strip().splitlines()
    assert commands[-1] == "python -m pytest -q tests"
    ci = [line.strip() for line in read(".ci/run").splitlines()]
    assert all(command in ci for command in commands), (commands, ".ci/run")


@pytest.mark.parametrize("line, complaint", [
    ("python stageI/run_exp.py --config stageI/cfg/birds.yml", "does not parse"),  # an unknown option
    ("python -m misc.commands.evaluate --images DIR", "does not parse"),  # --inception is required
    ("python -m misc.commands.evaluate_shapes --cfg x --checkpoint y --num two", "does not parse"),
    ("python -m misc.commands.compare --cfg x --side a", "does not parse"),  # one side
    ("python misc/evaluate.py --cfg x", "not one of the scripts"),  # a path before the reorganisation
    ("python -m misc.evaluate --cfg x", "is not a command"),
])
def test_the_check_rejects_what_no_longer_parses(line, complaint, monkeypatch, capsys):
    with pytest.raises((pytest.fail.Exception, AssertionError)) as failed:
        check_parses(line, monkeypatch, capsys)
    assert complaint in str(failed.value)


def test_the_check_reads_what_a_command_parsed(monkeypatch, capsys):
    """Commands whose parser is built inside ``main`` are parsed too, and
    README's continuation lines and VAR=value prefixes are read."""
    text = ("```bash\nTF_CPP_MIN_LOG_LEVEL=0 python data/generate_shapes.py --out x \\\n"
            "    --num-train 5   # a comment\npython -c 'print(1)'\n```\n")
    lines = bash_commands(text)
    assert [shlex.split(line, comments=True) for line in lines] == [
        ["TF_CPP_MIN_LOG_LEVEL=0", "python", "data/generate_shapes.py", "--out", "x", "--num-train", "5"],
        ["python", "-c", "print(1)"]]
    args = check_parses(lines[0], monkeypatch, capsys)
    assert (args.out, args.num_train) == ("x", 5)
    assert check_parses(lines[1], monkeypatch, capsys) is None
    assert check_parses("python stageII/run_exp.py --cfg c.yml --xla on", monkeypatch, capsys).xla == "on"


# -- paths and links -----------------------------------------------------------

def mentioned_paths(text):
    """Repository paths named in backticks (outside code blocks) and as words
    of the bash blocks' commands."""
    words = []
    for span in re.findall(r"`([^`\n]+)`", FENCE.sub("", text)):
        words += span.split()
    for line in bash_commands(text):
        words += shlex.split(line, comments=True)
    return sorted({w.rstrip(".,;:") for w in words if REPOSITORY_PATH.search(w.rstrip(".,;:"))})


def exists(path):
    """A path, or a pattern whose <placeholder> and * parts match something."""
    pattern = re.sub(r"<[^>]*>", "*", path.split("#")[0])
    return bool(glob.glob(os.path.join(ROOT, pattern)))


@pytest.mark.parametrize("document", documents())
def test_every_mentioned_path_exists(document):
    paths = mentioned_paths(read(document))
    missing = [p for p in paths if not exists(p)]
    assert not missing, f"{document} names paths that do not exist: {missing}"


@pytest.mark.parametrize("document", documents())
def test_every_relative_link_exists(document):
    folder = os.path.dirname(os.path.join(ROOT, document))
    targets = [t.split("#")[0] for t in LINK.findall(read(document))
               if not re.match(r"[a-z]+://|#", t)]
    missing = [t for t in targets if t and not os.path.exists(os.path.join(folder, t))]
    assert not missing, f"{document} links to files that do not exist: {missing}"


def test_the_path_check_finds_paths():
    text = "Run `python misc/evaluate.py` or `stageI/cfg/<name>.yml`; see `docs/x.md`.\n"
    assert mentioned_paths(text) == ["docs/x.md", "misc/evaluate.py", "stageI/cfg/<name>.yml"]
    assert [exists(p) for p in mentioned_paths(text)] == [False, False, True]
    assert mentioned_paths(read("README.md"))  # README names repository paths, and they are checked
