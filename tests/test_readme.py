"""The README and the docs say what the code does: the first screen leads to notebook 00, every link
resolves, and every ``hsbs`` command line they quote parses with the command's own parser and names only
configs, scripts and run folders that exist or that an earlier command creates."""
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from hsbs_lib.cli import COMMANDS, build_parser
from hsbs_lib.config import load_config
from hsbs_lib.engine.compare import load_plan

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
#: The run folders ``make demo`` writes; the README's quick start runs it before anything else.
DEMO_RUNS = {"runs/demo_baseline", "runs/demo_hsbs", "runs/demo_figures"}


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def test_the_first_screen_leads_to_notebook_00_in_jupyterlab():
    first_screen = "\n".join(README.read_text().splitlines()[:40])
    for needed in ("make demo", "make lab", "00_quickstart", "Python 3.11", "python3-venv", "make`",
                   "download.pytorch.org/whl/cpu", "4 min 40 s", "make test"):
        assert needed in first_screen, f"the README's first 40 lines do not mention {needed}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_relative_link_resolves(doc):
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if file == ROOT / "docs" / "TEACHING.md" and not file.exists():
            continue   # the teacher's guide of the course comes with the course material
        assert file.exists(), f"{doc.name} links to {target}, which does not exist"
        if anchor:
            headings = {_slug(line.lstrip("#")) for line in file.read_text().splitlines() if line.startswith("#")}
            assert anchor in headings, f"{doc.name} links to {target}, a heading {file.name} does not have"


def _code_lines(text: str) -> list[str]:
    """Command lines quoted in Markdown: the lines of fenced code blocks (continuations joined, comments cut)
    and inline code spans, in document order."""
    found: list[tuple[int, str]] = []
    for block in re.finditer(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        body = block.group(1).replace("\\\n", " ")
        found += [(block.start() + number, re.split(r"\s#\s", line)[0].strip())
                  for number, line in enumerate(body.splitlines())]
    without_blocks = re.sub(r"```.*?```", lambda m: " " * len(m.group(0)), text, flags=re.S)
    found += [(span.start(), " ".join(span.group(1).split())) for span in re.finditer(r"`([^`]+)`", without_blocks)]
    return [line for _, line in sorted(found)]


def hsbs_commands(text: str) -> list[list[str]]:
    """The ``hsbs`` command lines of a document (argv without ``hsbs``), torchrun and ``make demo DEMO_ARGS``
    included; a bare ``hsbs NAME`` or ``hsbs NAME --option`` names a command or an option, not a command line."""
    commands = []
    for line in _code_lines(text):
        try:
            words = shlex.split(line)
        except ValueError:          # an apostrophe in prose
            words = line.split()
        if words[:2] == ["make", "demo"]:
            args = [word.partition("=")[2] for word in words if word.startswith("DEMO_ARGS=")]
            if args:
                commands.append(["demo", *args[0].split()])
            continue
        if "hsbs_lib.cli" in words:
            words = ["hsbs", *words[words.index("hsbs_lib.cli") + 1:]]
        mention = len(words) == 3 and words[2].startswith("--")      # `hsbs eval --out`: one option named
        if len(words) > 2 and words[0] == "hsbs" and (words[1] in COMMANDS or words[1].startswith("-")) and not mention:
            commands.append(words[1:])
    return commands


def test_commands_are_found_in_code_blocks_and_spans():
    text = ("```bash\nhsbs check rafdb /d   # a copy\nhsbs train --config configs/x.yaml \\\n  train.epochs=1\n```\n"
            "and `hsbs eval --checkpoint runs/a/best.pt` but not `hsbs eval`, `hsbs eval --out` nor `make demo`; "
            '`make demo DEMO_ARGS="train.device=cuda"`')
    assert hsbs_commands(text) == [["check", "rafdb", "/d"], ["train", "--config", "configs/x.yaml", "train.epochs=1"],
                                   ["eval", "--checkpoint", "runs/a/best.pt"], ["demo", "train.device=cuda"]]


def _parse(parser, argv: list[str]):
    args, extra = parser.parse_known_args(argv)
    assert all("=" in item and not item.startswith("-") for item in extra), f"unrecognised {extra} in {argv}"
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def _paths(argv: list[str]) -> list[str]:
    values = [word.partition("=")[2] if "=" in word and not word.startswith("-") else word for word in argv]
    return [value for value in values if value.startswith(("runs/", "configs/", "scripts/"))]


def _run_folder(path: str) -> str:
    return "/".join(path.split("/")[:2])


def check_commands(commands: list[list[str]], where: str) -> int:
    """Parse each command line; its configs and scripts must exist, and a run folder it reads must come
    from an earlier command (or ``make demo``). Train lines must also compose a valid config."""
    parser = build_parser()
    produced = set(DEMO_RUNS)
    for argv in commands:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                args = _parse(parser, argv)
        except SystemExit as stop:
            if stop.code == 0:      # --help, --version
                continue
            raise AssertionError(f"{where}: hsbs {' '.join(argv)} does not parse") from None
        writes = {_run_folder(value) for value in (getattr(args, "out", None), getattr(args, "save_overlay", None))
                  if value}
        if args.command in ("compare", "choose") and not args.out and (ROOT / args.config).is_file():
            writes.add(_run_folder(load_plan(ROOT / args.config).out))     # the plan's folder
        for path in _paths(argv):
            if path.startswith("runs/"):
                assert _run_folder(path) in produced | writes, (
                    f"{where}: hsbs {' '.join(argv)} reads {path}, which no earlier command creates")
            else:
                assert (ROOT / path).exists(), f"{where}: hsbs {' '.join(argv)} names {path}, which does not exist"
        placeholder = any(value and value.isupper() for value in (args.command == "train" and args.data,
                                                                  args.command == "train" and args.method))
        if args.command == "train" and not args.resume and not placeholder:   # --method M: any method
            # placeholders and elisions: train.seed=S, ...
            given = [item for item in args.overrides if "=" in item and not item.partition("=")[2].isupper()]
            config = load_config(args.config, given, data=args.data, method=args.method, recipe=args.recipe)
            writes.add(_run_folder(config.out))
        produced |= writes
    return len(commands)


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_quoted_command_parses_and_names_what_exists(doc):
    check_commands(hsbs_commands(doc.read_text()), doc.name)


def test_the_readme_and_reference_quote_the_main_commands():
    commands = {argv[0] for doc in (README, ROOT / "docs" / "REFERENCE.md") for argv in hsbs_commands(doc.read_text())}
    assert commands >= {"train", "eval", "check", "predict", "figures", "compare", "bench", "synth", "export"}


def test_a_stale_command_is_caught():
    with pytest.raises(AssertionError, match="no earlier command creates"):
        check_commands([["figures", "--run", "runs/demo_hsbs", "--compare", "runs/baseline"]], "example")
    with pytest.raises(AssertionError, match="does not exist"):
        check_commands([["train", "--config", "configs/no_such_recipe.yaml"]], "example")
    with pytest.raises(AssertionError, match="does not parse"):
        check_commands([["eval", "--no-such-flag"]], "example")
    assert check_commands([["train", "--config", "configs/synthfer_hsbs.yaml", "--out", "runs/a"],
                           ["eval", "--checkpoint", "runs/a/best.pt"]], "example") == 2


def test_every_make_target_quoted_exists():
    targets = set(re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    for doc in DOCS:
        for line in _code_lines(doc.read_text()):
            words = line.split()
            if len(words) >= 2 and words[0] == "make" and re.fullmatch(r"[a-z-]+", words[1]):
                assert words[1] in targets, f"{doc.name} quotes make {words[1]}, which the Makefile lacks"


def test_python_examples_read_runs_that_make_demo_writes():
    for doc in DOCS:
        for block in re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S):
            for path in re.findall(r"""["'](runs/[^"']+)["']""", block):
                assert _run_folder(path) in DEMO_RUNS, f"{doc.name}'s Python example reads {path}, which make demo does not write"
