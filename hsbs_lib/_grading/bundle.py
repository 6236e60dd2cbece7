"""The student release: exercise notebooks and the library, without solutions, answer key or hidden cases.

    python -m hsbs_lib._grading.bundle [OUT]      (make student; OUT defaults to dist/student)

Writes OUT/ (a folder) and OUT.zip with notebooks/NN_*.ipynb (the exercise versions, from
notebooks/exercises/), hsbs_lib/ without hsbs_lib/_grading/hidden.py, configs/, the README, docs/ (without the
teacher's guide, docs/TEACHING.md) and pyproject.toml. Left out: the numbered notebooks with their
solution cells, notebooks/answers/ (the answer key), the teacher's guide and the hidden cases. The
bundle is refused if a solution cell, or a solution line in an exercise cell, would ship.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import nbformat

from hsbs_lib.exercises import solution_lines

ROOT = Path(__file__).resolve().parents[2]
#: (folder name, file name) pairs that stay with the teacher.
TEACHER_ONLY = {("_grading", "hidden.py"), ("docs", "TEACHING.md")}


def _ignore(folder: str, names: list[str]) -> list[str]:
    return [name for name in names if name == "__pycache__" or name.endswith(".pyc")
            or (Path(folder).name, name) in TEACHER_ONLY]


def build_bundle(out: str | Path, root: Path = ROOT) -> Path:
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(root / "hsbs_lib", out / "hsbs_lib", ignore=_ignore)
    for folder in ("configs", "docs"):
        if (root / folder).is_dir():
            shutil.copytree(root / folder, out / folder, ignore=_ignore)
    for name in ("README.md", "pyproject.toml", "environment.yml"):
        if (root / name).is_file():
            shutil.copy2(root / name, out / name)
    (out / "notebooks").mkdir()
    for path in sorted((root / "notebooks" / "exercises").glob("[0-9][0-9]_*.ipynb")):
        shutil.copy2(path, out / "notebooks" / path.name)
    for path in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb")):   # notebooks without exercises
        if not (out / "notebooks" / path.name).exists():
            shutil.copy2(path, out / "notebooks" / path.name)
    if (root / "notebooks" / "reference").is_dir():
        shutil.copytree(root / "notebooks" / "reference", out / "notebooks" / "reference")
    leaked = _solution_leaks(out, root)
    if leaked:
        shutil.rmtree(out)
        raise ValueError(f"solution code would ship in the student bundle: {leaked[:3]}")
    archive = shutil.make_archive(str(out), "zip", root_dir=out.parent, base_dir=out.name)
    return Path(archive)


def _solution_leaks(out: Path, root: Path) -> list[str]:
    lines = set()
    for path in (root / "notebooks").glob("[0-9][0-9]_*.ipynb"):
        for cell in nbformat.read(path, as_version=4).cells:
            if "solution" in cell.get("metadata", {}).get("tags", []):
                lines |= {line for line in solution_lines(cell.source) if not line.startswith(("import ", "from "))}
    leaks = []
    for path in (out / "notebooks").glob("*.ipynb"):
        cells = nbformat.read(path, as_version=4).cells
        leaks += [f"{path.name}: a cell tagged solution" for cell in cells
                  if "solution" in cell.get("metadata", {}).get("tags", [])]
        text = "\n".join(cell.source for cell in cells if "exercise" in cell.get("metadata", {}).get("tags", []))
        leaks += [f"{path.name}: {line}" for line in lines if line in text]
    return leaks


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "dist/student"
    print(f"wrote {build_bundle(target)} and {target}/")
