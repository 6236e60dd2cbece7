"""docs/TEACHING.md, the teacher's guide, against the repository: its commands parse, the files it names
exist, its times are the ones docs/BENCHMARKS.md records, its graded exercises are the notebooks' exercise
cells, and its schedule has six to eight meetings."""
import re
import shlex
from pathlib import Path

import nbformat
import pytest

from hsbs_lib.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "TEACHING.md"
TEXT = GUIDE.read_text()
BENCHMARKS = (ROOT / "docs" / "BENCHMARKS.md").read_text()
# The grading command and its policy document arrive together; without the one the other is not checked.
GRADING = "grade" in COMMANDS


def command_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", TEXT, flags=re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("hsbs ")]


def test_the_guide_has_hsbs_commands():
    assert len(command_lines()) >= 6


@pytest.mark.parametrize("line", command_lines())
def test_every_command_of_the_guide_parses(line):
    words = shlex.split(line)[1:]
    if words[0] == "grade" and not GRADING:
        pytest.skip("hsbs grade is not part of this installation")
    parser = build_parser()
    args, extra = parser.parse_known_args(words)
    assert args.command == words[0]
    assert all("=" in item for item in extra), f"{line}: unrecognised {extra}"
    for option in ("config", "data", "method"):
        value = getattr(args, option, None)
        if option == "config" and value:
            assert (ROOT / value).is_file(), f"{line}: {value} does not exist"
        if option == "data" and value and args.command == "train":
            assert (ROOT / "configs" / "datasets" / f"{value}.yaml").is_file()
            if getattr(args, "recipe", None) is None:
                assert (ROOT / "configs" / "recipes" / f"{value}_course.yaml").is_file()
        if option == "method" and value:
            assert (ROOT / "configs" / "methods" / f"{value}.yaml").is_file()


def named_paths() -> list[str]:
    links = re.findall(r"\]\(([^)#]+)\)", TEXT)
    resolved = [str((GUIDE.parent / link).resolve().relative_to(ROOT)) for link in links]
    quoted = re.findall(r"`((?:notebooks|configs|hsbs_lib|docs|tests)/[^`*\s]+)`", TEXT)
    return sorted(set(resolved + [path.rstrip("/") for path in quoted]))


@pytest.mark.parametrize("path", named_paths())
def test_every_file_the_guide_names_exists(path):
    if path == "docs/GRADING.md" and not GRADING:
        pytest.skip("docs/GRADING.md comes with the hsbs grade command")
    if "NN_" in path:
        assert list(ROOT.glob(path.replace("NN_*", "[0-9][0-9]_*").replace("NN_", "[0-9][0-9]_"))) or \
            (ROOT / "notebooks" / "exercises").is_dir()
        return
    assert (ROOT / path).exists(), f"docs/TEACHING.md names {path}, which does not exist"


def benchmark_table(heading: str) -> dict[str, list[str]]:
    section = BENCHMARKS[BENCHMARKS.index(heading):]
    section = section[:section.index("\n\n", section.index("|---"))]
    return {cells[0]: cells[1:] for cells in
            ([c.strip() for c in row.strip("|").split("|")] for row in section.splitlines() if row.startswith("| 0"))}


def guide_rows() -> dict[str, list[str]]:
    rows = {}
    for row in TEXT.splitlines():
        match = re.match(r"^\| \[(\d\d_\w+)\]", row)
        if match:
            rows[match.group(1)] = [c.strip() for c in row.strip("|").split("|")][2:]
    return rows


def test_the_guide_times_are_the_benchmarked_ones():
    smoke = benchmark_table("### Notebooks in SMOKE mode")
    full = benchmark_table("### Notebooks at their full budget")
    rows = guide_rows()
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert sorted(rows) == notebooks
    for name, (smoke_s, cpu, gpu) in rows.items():
        assert smoke_s == f"{smoke[name][0]} s", f"{name}: SMOKE {smoke_s} against {smoke[name][0]} s"
        assert cpu == full[name][1], f"{name}: {cpu} against BENCHMARKS' {full[name][1]}"
        recorded_gpu = full[name][2]
        assert gpu.replace("about ", "") in recorded_gpu or gpu == "the same", (name, gpu, recorded_gpu)
    assert "58.8 minutes" in TEXT and "**58.8 minutes**" in BENCHMARKS
    assert "66.6 %" in TEXT and "**66.62**" in BENCHMARKS


def test_the_schedule_has_six_to_eight_meetings_and_grades_the_exercise_cells():
    schedule = TEXT[TEXT.index("## Schedule"):TEXT.index("## Exercises and grading")]
    meetings = re.findall(r"^\| (\d) \|", schedule, flags=re.M)
    assert 6 <= len(meetings) <= 8 and meetings == [str(k) for k in range(1, len(meetings) + 1)]
    graded = {}
    for row in re.findall(r"^\| \d \|.*$", schedule, flags=re.M):
        for notebook, names in re.findall(r"(\d\d): ((?:`\w+`|a uniform similarity|, )+)", row):
            graded[notebook] = re.findall(r"`(\w+)`", names)
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        defined = {name for c in cells if "solution" in c.metadata.get("tags", [])
                   for name in re.findall(r"^def (\w+)", c.source, flags=re.M)}
        assert set(graded.get(path.name[:2], [])) <= defined, (path.name, graded.get(path.name[:2]), defined)
    assert sum(len(names) for names in graded.values()) >= 10
