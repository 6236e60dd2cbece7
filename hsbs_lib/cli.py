"""The ``hsbs`` command. Each subcommand lives next to the code it drives.

A module that serves subcommand NAME defines ``add_NAME_arguments(parser)`` and ``run_NAME(args) -> int``.
Only the chosen subcommand's module is imported, so ``hsbs --help``, ``hsbs --version`` and ``hsbs check``
start without importing torch.
"""
from __future__ import annotations

import argparse
import codecs
import importlib
import logging
import platform
import sys
from typing import Iterable, Sequence

import yaml

from hsbs_lib import __version__
from hsbs_lib.config import validate_config
from hsbs_lib.extras import MissingExtraError

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("hsbs_lib.demo", "the main job: train baseline and HSBS on SynthFER, compare them, draw their figures"),
    "synth": ("hsbs_lib.data.synthfer.writer", "render SynthFER to disk in the RAF-DB basic layout"),
    "check": ("hsbs_lib.data.checks", "validate a dataset copy: counts per split and class, every bad entry"),
    "train": ("hsbs_lib.engine.train", "train a model from a YAML recipe plus key=value overrides"),
    "eval": ("hsbs_lib.engine.evaluate", "evaluate a checkpoint: accuracy, mean class accuracy, macro-F1, confusion"),
    "predict": ("hsbs_lib.inference", "detect faces in photos and classify their expression"),
    "export": ("hsbs_lib.inference", "export a checkpoint's eval-mode model to TorchScript or ONNX"),
    "attention": ("hsbs_lib.engine.real_attention", "score a checkpoint's attention on real faces against the eyes "
                                                    "and mouth that OpenCV's Haar cascades find"),
    "figures": ("hsbs_lib.demo", "regenerate every figure for trained runs"),
    "compare": ("hsbs_lib.engine.compare", "train methods/ablations over seeds and tabulate mean and std"),
    "choose": ("hsbs_lib.engine.choose", "rank a comparison's rows on the validation split and write the plan that "
                                         "confirms the best on fresh seeds"),
    "bench": ("hsbs_lib.bench", "measure rendering, input pipelines, training and inference speed"),
    "grade": ("hsbs_lib._grading.command", "execute submitted exercise notebooks and write one score table"),
}


def escape_unencodable(error: UnicodeError) -> tuple[str, int]:
    """Codec error handler for printing: a byte of a file name that is not UTF-8 (which Python holds as a
    surrogate, ``os.fsdecode``) prints as ``\\xe9``, any other unencodable character as ``\\u00b2``."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = error.object[error.start:error.end]
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                   else c.encode("ascii", "backslashreplace").decode("ascii") for c in text), error.end


codecs.register_error("hsbs.escape", escape_unencodable)


def printable_streams() -> None:
    """Make stdout and stderr escape what they cannot encode instead of raising: a file name that is not
    UTF-8 must not abort a command on a strict UTF-8 terminal."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="hsbs.escape")


#: The most characters one line of an error message shows: a value pasted from a file never becomes the message.
MESSAGE_LINE_CHARS = 500


def bounded(message: str) -> str:
    """``message`` with every line cut to :data:`MESSAGE_LINE_CHARS` characters, saying how long it was."""
    return "\n".join(line if len(line) <= MESSAGE_LINE_CHARS else
                     f"{line[:MESSAGE_LINE_CHARS - 40]}... (a line of {len(line):,} characters, cut)"
                     for line in message.splitlines() or [""])


#: The help of every subcommand's ``--device``: each defaults to ``auto`` (CUDA, else MPS, else the CPU).
DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps (default auto: CUDA when visible, else Apple's MPS, else the CPU)"

#: What a CUDA (or MPS) out-of-memory error is turned into: the settings that lower the memory a run needs.
OUT_OF_MEMORY_HINT = ("lower train.batch_size (train.accumulate=N keeps the effective batch) or "
                      "data.device_cache_max_gb (less of the image cache on the device)")


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv``: its first word that is not an option (the options before a subcommand,
    ``-v`` and ``--version``, take no value). None when there is none, or it is not a subcommand."""
    word = next((item for item in argv if not item.startswith("-")), None)
    return word if word in COMMANDS else None


def _add_verbose(parser: argparse.ArgumentParser, *, default) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="debug logging, and a traceback instead of a one-line error")


def _add_command_arguments(name: str, sub: argparse.ArgumentParser, module) -> None:
    getattr(module, f"add_{name}_arguments")(sub)
    # -v after the subcommand too; SUPPRESS keeps a -v given before it (argparse would reset it to False).
    _add_verbose(sub, default=argparse.SUPPRESS)
    for action in sub._actions:   # one wording of --device everywhere, after what the device is for
        if action.dest == "device" and action.option_strings:
            said = DEVICE_HELP if action.default is not None else DEVICE_HELP.replace(
                "default auto", "default: the config's train.device, auto")
            purpose = action.help if action.help and not action.help.startswith(("auto", "cpu")) else ""
            action.help = f"{purpose}: {said}" if purpose else said
    if name == "train":
        sub.add_argument("--print-config", action="store_true",
                         help="print the resolved config (defaults, recipe, overrides) as YAML and exit without "
                              "training")


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``hsbs`` parser with the options of ``commands`` (default: every subcommand). Only those
    subcommands' modules are imported; the others are listed with their one-line help."""
    wanted = set(COMMANDS if commands is None else commands)
    parser = argparse.ArgumentParser(prog="hsbs", description="hsbs_lib: facial expression recognition you can read",
                                     epilog="Options may be given as key=value overrides (train.epochs=2 "
                                            "data.root=/data/RAF-DB/basic); hsbs COMMAND --help lists a command's.")
    _add_verbose(parser, default=False)
    parser.add_argument("--version", action="version",
                        version=f"hsbs {__version__} (Python {platform.python_version()})")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        if name not in wanted:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            sub.set_defaults(_missing=True)
            continue
        _add_command_arguments(name, sub, module)
    return parser


def resolved_train_config(args: argparse.Namespace):
    """The config ``hsbs train`` would run with these arguments (as ``run_train`` builds it), without training."""
    train = importlib.import_module(COMMANDS["train"][0])
    return validate_config(train.train_config_from_args(args))


def print_train_config(args: argparse.Namespace) -> int:
    """``hsbs train --print-config``: the resolved config as YAML on stdout; nothing is trained or written."""
    print(yaml.safe_dump(resolved_train_config(args).to_dict(), sort_keys=False), end="")
    return 0


def is_out_of_memory(error: BaseException) -> bool:
    """True for torch's out-of-memory error (CUDA, MPS), told by its type or message without importing torch."""
    torch = sys.modules.get("torch")
    out_of_memory = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if out_of_memory is not None and isinstance(error, out_of_memory):
        return True
    return isinstance(error, RuntimeError) and ("CUDA out of memory" in str(error)
                                                or "MPS backend out of memory" in str(error))


def main(argv: list[str] | None = None) -> int:
    printable_streams()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = command_of(argv)
    parser = build_parser([command] if command else [])
    args, extra = parser.parse_known_args(argv)
    # argparse gives a positional list one run of words: key=value overrides after an option
    # (``hsbs train a=1 --out runs/x b=2``) come back unrecognised; they join the overrides, in order.
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in item and not item.startswith("-") for item in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_missing", False):
        print(f"hsbs {args.command}: not available in this installation", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    try:
        if getattr(args, "print_config", False):
            return print_train_config(args)
        return int(getattr(module, f"run_{args.command}")(args) or 0)
    except (OSError, ValueError, KeyError, MissingExtraError) as error:
        # Bad input (and a full or read-only disk) is reported in one readable message, not a traceback.
        if args.verbose:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        if isinstance(error, OSError) and error.strerror and error.filename is None:
            message = error.strerror  # "[Errno 28] ..." says less than the sentence itself
        print(f"hsbs {args.command}: error: {bounded(str(message))}", file=sys.stderr)
        return 1
    except RuntimeError as error:
        if args.verbose or not is_out_of_memory(error):
            raise
        said = str(error).splitlines()[0].split(" (GPU")[0] if str(error) else type(error).__name__
        print(f"hsbs {args.command}: error: out of device memory ({said[:120]}): {OUT_OF_MEMORY_HINT}",
              file=sys.stderr)
        return 1

if __name__ == "__main__":
    sys.exit(main())
