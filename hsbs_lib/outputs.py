"""The output rule, in one place: what a command may write, where, and how.

Every command that writes (train, eval, predict, export, figures, compare, synth, reference) writes into one
output folder through an :class:`OutputFolder`, which enforces:

* a file there is replaced only if this command wrote it, as the folder's manifest (``.hsbs-outputs.json``,
  kept by the commands themselves) records with the file's size and SHA-256, or with ``--force``; a file
  the user put there, or changed since, or one another command wrote, is refused in one line;
* never a file the command reads (its checkpoint, an input photo), not even with ``--force``;
* never outside the folder: a name (from a plan, a class folder, a file list) that is absolute, holds
  ``..`` or leads through a link out of the folder is refused;
* atomically: the bytes go to a temporary file in the same folder, which is then renamed over the target,
  so a reader (or a killed command) never leaves half a file.

A refusal is a :class:`OutputRefused`, a ValueError: the ``hsbs`` command prints it as one line.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

MANIFEST_NAME = ".hsbs-outputs.json"
MANIFEST_FORMAT = 1


class OutputRefused(ValueError):
    """A write the output rule forbids (one line: the file, why, and what to do)."""


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary)`` for a temporary file beside ``path``, then rename it onto ``path``.

    The temporary name keeps the suffix (``.NAME.RANDOM.tmp.png``), as writers that choose the format by
    the suffix (matplotlib, PIL) need. An error leaves ``path`` as it was and removes the temporary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str, *, encoding: str = "utf-8",
                      errors: str = "strict") -> Path:
    return atomic_write(path, lambda temporary: temporary.write_text(text, encoding=encoding, errors=errors))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda temporary: temporary.write_bytes(data))


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def plain_name(name: str, what: str = "name") -> str:
    """``name`` when it is one plain file or folder name (a compare row, a run name): no separator, not
    ``.``/``..``, not hidden, not empty; else OutputRefused saying so."""
    text = str(name)
    if not text or text in (".", "..") or text.startswith(".") or "/" in text or "\\" in text or "\0" in text:
        raise OutputRefused(f"{what} {text!r} is not a plain folder name (no '/', '\\', '..' or leading '.'): "
                            "it would be written outside the output folder; rename it")
    return text


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


class OutputFolder:
    """The folder ``command`` writes into, and the rule each of its writes follows (see the module docstring).

    ``reads``: the files the command reads (never written, even with ``force``). ``force``: replace files
    this command did not write (``--force``)."""

    def __init__(self, folder: str | os.PathLike, command: str, *, force: bool = False,
                 reads: Iterable[str | os.PathLike] = ()):
        self.folder = Path(folder)
        self.command = command
        self.force = force
        self.reads = [Path(path) for path in reads]

    # ------------------------------------------------------------------------------------ manifest
    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST_NAME

    def manifest(self) -> dict[str, dict]:
        """{relative name: {"command", "bytes", "sha256"}}; {} when there is none or it cannot be read (then
        nothing counts as written by a command, which is the safe reading)."""
        try:
            values = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        files = values.get("files") if isinstance(values, dict) else None
        return {str(k): v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}

    def written_by_me(self, name: str) -> bool:
        """Whether the manifest says this command wrote ``name`` and the file still holds those bytes."""
        entry = self.manifest().get(name)
        path = self.folder / name
        if not entry or entry.get("command") != self.command or not path.is_file() or path.is_symlink():
            return False
        return path.stat().st_size == entry.get("bytes") and file_sha256(path) == entry.get("sha256")

    def record(self, *names: str) -> None:
        """Record the files ``names`` (relative to the folder) as written by this command, as they are now."""
        files = self.manifest()
        for name in names:
            path = self.folder / name
            files[self.relative(path)] = {"command": self.command, "bytes": path.stat().st_size,
                                          "sha256": file_sha256(path)}
        values = {"written_by": "hsbs_lib", "format": MANIFEST_FORMAT,
                  "note": "files the hsbs commands wrote here; each may replace only its own", "files": files}
        write_text_atomic(self.manifest_path, json.dumps(values, indent=1, sort_keys=True) + "\n")

    # ------------------------------------------------------------------------------------- the rule
    def relative(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix()

    def target(self, name: str | os.PathLike) -> Path:
        """The path to write ``name`` (relative to the folder) at, once the rule allows it; else OutputRefused."""
        relative = PurePosixPath(Path(name).as_posix())
        if (not str(name) or relative.is_absolute() or any(part in ("..", "") for part in relative.parts)
                or relative.as_posix() == MANIFEST_NAME or "\0" in str(name)):
            raise OutputRefused(f"{name!r} would be written outside {self.folder} (or over its manifest); "
                                "names of outputs must stay inside the output folder")
        path = self.folder / relative
        # A folder on the way that is a link out of the output folder would carry the write outside it.
        base = self.folder.resolve()
        if base != path.parent.resolve() and base not in path.parent.resolve().parents:
            raise OutputRefused(f"{path} would be written outside the output folder {self.folder} "
                                f"({path.parent} leads to {path.parent.resolve()})")
        for read in self.reads:
            if path.exists() and read.exists() and _same_file(path, read):
                which = "" if os.path.abspath(path) == os.path.abspath(read) else f" ({read})"
                raise OutputRefused(f"{path} is a file hsbs {self.command} reads{which}; it is never replaced, "
                                    "not even with --force: choose another output")
        if path.is_dir() and not path.is_symlink():
            raise OutputRefused(f"{path} is a folder; choose another output name")
        if (path.exists() or path.is_symlink()) and not self.force and not self.written_by_me(self.relative(path)):
            raise OutputRefused(f"{path} exists and was not written by hsbs {self.command} (its {MANIFEST_NAME} "
                                "does not list it as is); choose another output, or pass --force to replace it")
        return path

    def check(self, names: Iterable[str | os.PathLike]) -> list[Path]:
        """Check every name before anything is written, so a refusal leaves the folder as it was."""
        return [self.target(name) for name in names]

    def write(self, name: str | os.PathLike, write: Callable[[Path], object]) -> Path:
        """Check ``name``, write it atomically with ``write(temporary_path)`` and record it."""
        path = atomic_write(self.target(name), write)
        self.record(self.relative(path))
        return path

    def write_text(self, name: str | os.PathLike, text: str, **options) -> Path:
        return self.write(name, lambda temporary: temporary.write_text(text, **options))

    def write_bytes(self, name: str | os.PathLike, data: bytes) -> Path:
        return self.write(name, lambda temporary: temporary.write_bytes(data))

    def write_json(self, name: str | os.PathLike, values: object) -> Path:
        return self.write_text(name, json.dumps(values, indent=2) + "\n")


def output_for(path: str | os.PathLike, command: str, *, force: bool = False,
               reads: Iterable[str | os.PathLike] = ()) -> tuple[OutputFolder, str]:
    """The output folder of a single-file output ``path`` (its parent) and the file's name in it."""
    path = Path(path)
    return OutputFolder(path.parent, command, force=force, reads=reads), path.name
