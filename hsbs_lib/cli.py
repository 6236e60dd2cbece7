"""The ``hsbs`` command. Each subcommand lives next to the code it drives.

A module that serves subcommand NAME defines ``add_NAME_arguments(parser)`` and ``run_NAME(args) -> int``.
"""
from __future__ import annotations

import argparse
import codecs
import importlib
import logging
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("hsbs_lib.demo", "the main job: train baseline and HSBS on SynthFER, compare them, draw their figures"),
    "synth": ("hsbs_lib.data.synthfer.writer", "render SynthFER to disk in the RAF-DB basic layout"),
    "check": ("hsbs_lib.data.checks", "validate a dataset copy: counts per split and class, every bad entry"),
    "train": ("hsbs_lib.engine.train", "train a model from a YAML recipe plus key=value overrides"),
    "eval": ("hsbs_lib.engine.evaluate", "evaluate a checkpoint: accuracy, mean class accuracy, macro-F1, confusion"),
    "predict": ("hsbs_lib.inference", "detect faces in photos and classify their expression"),
    "export": ("hsbs_lib.inference", "export a checkpoint's eval-mode model to TorchScript or ONNX"),
    "figures": ("hsbs_lib.demo", "regenerate every figure for trained runs"),
    "compare": ("hsbs_lib.engine.compare", "train methods/ablations over seeds and tabulate mean and std"),
    "bench": ("hsbs_lib.bench", "measure rendering, input pipelines, training and inference speed"),
    "grade": ("hsbs_lib._grading.grade", "execute submitted exercise notebooks and write one score table"),
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsbs", description="hsbs_lib: facial expression recognition you can read")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            sub.set_defaults(_missing=True)
            continue
        getattr(module, f"add_{name}_arguments")(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    printable_streams()
    parser = build_parser()
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
        return int(getattr(module, f"run_{args.command}")(args) or 0)
    except (OSError, ValueError, KeyError) as error:
        # Bad input (and a full or read-only disk) is reported in one readable message, not a traceback.
        if args.verbose:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        if isinstance(error, OSError) and error.strerror and error.filename is None:
            message = error.strerror  # "[Errno 28] ..." says less than the sentence itself
        print(f"hsbs {args.command}: error: {bounded(str(message))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
