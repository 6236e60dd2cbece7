"""A run folder is written by one process at a time, and never over files a run did not write.

:func:`claim_run_folder` is what :func:`hsbs_lib.engine.train.fit` does first: it refuses a folder holding
files that are not a run of hsbs_lib (unless ``overwrite``), takes the folder's lock file, and removes the
temporary checkpoint files a killed write left behind. The lock file holds the writer's host and process
id; a lock whose process is gone (killed, crashed) is stale and taken over.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Iterator

import yaml

from hsbs_lib.config import Config, dotted_items, load_yaml, save_config
from hsbs_lib.engine.build import trained_same_recipe
from hsbs_lib.outputs import MANIFEST_NAME, OutputFolder

log = logging.getLogger("hsbs_lib.engine")

LOCK_NAME = ".hsbs-run.lock"
# save_checkpoint writes NAME to ".NAME.<random>.tmp" in the same folder, then renames it.
TEMPORARY_PATTERN = ".*.pt.*.tmp"
# What fit writes into a run folder (plus figures drawn into it, a skipped-entries list, ...).
RUN_MARKER = "config.yaml"
RUN_OUTPUTS = ("last.pt", "best.pt", "eval.json", "metrics.csv")
# Everything fit records in the folder's manifest (hsbs_lib.outputs) as written by "train".
RECORDED = (RUN_MARKER, *RUN_OUTPUTS, "skipped.txt")


class RunFolderBusyError(OSError):
    """Another live process holds the run folder's lock (an OSError, as a busy file is: every command
    reports it in one line)."""


def is_run_folder(folder: Path) -> bool:
    """Whether ``folder`` is a training run: its manifest (:mod:`hsbs_lib.outputs`) records that hsbs train
    wrote its config.yaml. A folder whose manifest records nothing of hsbs train's was written before runs kept
    one: it is a run when a config.yaml sits beside a run's results (a checkpoint, metrics or an evaluation)."""
    files = OutputFolder(folder, "train").manifest()
    trained = {name for name, entry in files.items() if entry.get("command") == "train"}
    if trained:
        return RUN_MARKER in trained
    return (folder / RUN_MARKER).is_file() and _has_results(folder)


def foreign_files(folder: Path) -> list[str]:
    """Names in ``folder`` when it holds files but is not a run folder (:func:`is_run_folder`); else []."""
    if not folder.is_dir():
        return []
    names = sorted(path.name for path in folder.iterdir()
                   if path.name not in (LOCK_NAME, MANIFEST_NAME) and not path.match(TEMPORARY_PATTERN))
    return [] if not names or is_run_folder(folder) else names


def record_run_outputs(folder: Path) -> None:
    """Record the run files present in ``folder`` in its manifest, as written by hsbs train."""
    present = [name for name in RECORDED if (folder / name).is_file()]
    if present:
        OutputFolder(folder, "train").record(*present)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary checkpoint files of writes that never finished; returns what was removed.

    Only called while holding the folder's lock, so no live writer owns them."""
    removed = []
    for path in folder.glob(TEMPORARY_PATTERN):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("removed %d unfinished checkpoint write(s) in %s: %s", len(removed), folder,
                 ", ".join(path.name for path in removed))
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # alive, owned by another user
        return True
    return True


def _lock_holder(path: Path) -> dict | None:
    """The lock's recorded writer, or None when the lock is stale (its process is gone) or unreadable."""
    try:
        holder = json.loads(path.read_text())
        pid, host = int(holder["pid"]), str(holder["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None           # half-written or damaged: its writer died before finishing it
    if host == socket.gethostname() and not _process_alive(pid):
        return None
    return holder


@contextlib.contextmanager
def run_folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder``'s lock file while the block runs; a second writer gets :class:`RunFolderBusyError`.

    A lock left by a dead process on this host is taken over (with a log line)."""
    path = Path(folder) / LOCK_NAME
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
    for _ in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is not None:
                raise RunFolderBusyError(
                    f"run folder {folder} is in use by process {holder['pid']} on {holder['host']} "
                    f"(lock file {path}); wait for it to finish or choose another --out (delete the lock file only "
                    "if that process is not training)") from None
            log.info("taking over the stale lock %s (its process is gone)", path)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(handle, "w") as file:
            file.write(record)
        break
    else:
        raise RunFolderBusyError(f"could not take the lock file {path}: another process keeps taking it")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def write_run_config(config: Config, folder: Path, *, replace_other_recipe: bool = False) -> None:
    """Write ``folder/config.yaml`` for a run that starts there, first removing the folder's eval.json: it
    scored the run this one replaces or extends, and were this run killed it would sit beside the new
    config.yaml as if it were this recipe's result (hsbs compare reuses a run by exactly that pair).

    ``replace_other_recipe`` (a fresh start, not a resume): when the folder holds a run of another recipe,
    its checkpoints and metrics go too, so nothing of it is mistaken for the new run's. This runs when
    training starts, not when the command is checked, so a start that fails leaves that run whole."""
    if replace_other_recipe and (folder / RUN_MARKER).is_file() and not holds_run_of(folder, config):
        for name in RUN_OUTPUTS:
            (folder / name).unlink(missing_ok=True)
        log.info("replacing the run of another recipe in %s", folder)
    (folder / "eval.json").unlink(missing_ok=True)
    save_config(config, folder / RUN_MARKER)
    record_run_outputs(folder)     # from now on the folder is this command's run (its manifest says so)


def _has_results(folder: Path) -> bool:
    """Whether ``folder`` holds any output of a run (checkpoints, metrics or an evaluation)."""
    return any((folder / name).exists() for name in RUN_OUTPUTS)


def _stored_config(folder: Path) -> dict | None:
    """``folder/config.yaml`` as a dict, or None when it is missing or cannot be read as one."""
    try:
        stored = load_yaml((folder / RUN_MARKER).read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return None
    return stored if isinstance(stored, dict) else None


def holds_run_of(folder: str | os.PathLike, config: Config) -> bool:
    """Whether ``folder`` holds a run of the recipe ``config`` (its config.yaml says so): what ``hsbs demo``
    and ``hsbs compare`` reuse or resume. An unreadable config.yaml is another recipe's run, retrained."""
    stored = _stored_config(Path(folder))
    return stored is not None and trained_same_recipe(stored, config)


def finished_run_of(folder: str | os.PathLike, config: Config) -> bool:
    """Whether ``folder`` holds a finished run of ``config``'s recipe: its eval.json (the last thing ``fit``
    writes) beside a config.yaml of the same recipe. What ``hsbs compare`` and ``hsbs choose`` take as done."""
    return (Path(folder) / "eval.json").is_file() and holds_run_of(folder, config)


def resumable_run_of(folder: str | os.PathLike, config: Config) -> bool:
    """Whether ``folder`` holds a run of ``config``'s recipe with a last.pt to continue from: what ``hsbs demo``
    and ``hsbs compare`` resume when it has not finished. ``fit`` itself refuses a last.pt of another recipe."""
    return (Path(folder) / "last.pt").is_file() and holds_run_of(folder, config)


def _file_states(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file directly in ``folder``: what a run could have written."""
    return {path.name: (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.iterdir() if path.is_file()}


@contextlib.contextmanager
def claim_run_folder(folder: str | os.PathLike, *, overwrite: bool = False, main_process: bool = True
                     ) -> Iterator[Path]:
    """Check, lock and tidy ``folder`` for one training run (only the main process writes or locks).

    Raises ValueError when the folder holds files that are not a run (unless ``overwrite``) and
    :class:`RunFolderBusyError` when another live process is writing into it."""
    folder = Path(folder)
    # Every process checks (the main one only adds run files and its lock), so all of them refuse together.
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"run folder {folder} is a file, not a folder; choose another --out")
    foreign = foreign_files(folder)
    if foreign and not overwrite:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(f"run folder {folder} holds files that are not a training run ({shown}); "
                         "choose an empty or new --out, or pass --overwrite to write into it anyway")
    if not main_process:
        yield folder
        return
    # The folders this call creates (the run folder and any missing parents), innermost first.
    created = [path for path in (folder, *folder.parents) if not path.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with run_folder_lock(folder):
            remove_stale_temporaries(folder)
            before = _file_states(folder)
            try:
                yield folder
            finally:
                # Once this or an earlier start made the folder a run (its config.yaml recorded), what the
                # run wrote is recorded too, whether it finished or failed; a start refused before writing
                # anything (a resume of a hand-edited config) leaves the folder, manifest included, as it was.
                if (OutputFolder(folder, "train").manifest().get(RUN_MARKER, {}).get("command") == "train"
                        and _file_states(folder) != before):
                    record_run_outputs(folder)
    finally:
        # A run that failed before writing anything leaves no empty folders behind it.
        for path in created:
            if not path.is_dir() or any(path.iterdir()):
                break
            path.rmdir()


def refuse_another_run(folder: str | os.PathLike, config: Config, *, overwrite: bool = False) -> None:
    """Refuse to start a fresh run in ``folder`` when it holds a run of another recipe (``hsbs train --out``).

    A run of the same recipe is reused as before. With ``overwrite`` the command goes ahead; the other run's
    checkpoints, metrics and evaluation are removed once the new run starts (:func:`write_run_config`)."""
    folder = Path(folder)
    if not (folder / RUN_MARKER).is_file():
        return
    stored = _stored_config(folder)
    if stored is not None and trained_same_recipe(stored, config):
        return
    if overwrite or not _has_results(folder):
        # Without a checkpoint, metrics or evaluation there is nothing to continue or lose: a start that
        # diverged in its first epoch, or was killed before it ended, is replaced by the corrected command.
        return
    if stored is not None:
        old = dotted_items({key: stored.get(key) for key in ("data", "model", "train")})
        new = dotted_items(config.to_dict())
        keys = [key for key in new if key.split(".")[0] in ("data", "model", "train")
                and key.split(".")[-1] not in ("progress", "device", "threads") and old.get(key) != new[key]]
        what = f"a run of another recipe (differing in {', '.join(keys[:4]) or 'model options'})"
    else:
        what = "a run whose config.yaml cannot be read"
    raise ValueError(f"{folder} holds {what}; continue it with hsbs train --resume {folder}, choose another --out, "
                     "or pass --overwrite to replace it")
