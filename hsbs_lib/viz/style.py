"""One figure style for the whole package: sizes, a palette per class, a fixed DPI, save_figure."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))  # headless by default; notebooks set inline themselves
import matplotlib.pyplot as plt  # noqa: E402

from hsbs_lib.config import repo_root  # noqa: E402
from hsbs_lib.data.labels import CANONICAL_8  # noqa: E402
from hsbs_lib.outputs import OutputFolder, atomic_write  # noqa: E402

DPI = 150
FONT_SIZE = 9
# One colour per canonical class, the same in every figure (colour-blind friendly, from seaborn's "colorblind").
CLASS_COLORS: dict[str, str] = {
    "surprise": "#0173b2", "fear": "#de8f05", "disgust": "#029e73", "happiness": "#d55e00",
    "sadness": "#cc78bc", "anger": "#ca9161", "neutral": "#949494", "contempt": "#56b4e9",
}
METHOD_COLORS: dict[str, str] = {
    "baseline": "#4d4d4d", "hsbs": "#d62728", "clcl": "#1f77b4", "phanet": "#2ca02c", "mfer": "#9467bd",
}


def apply_style() -> None:
    """Set the package's matplotlib defaults (idempotent)."""
    plt.rcParams.update({
        "figure.dpi": 100, "savefig.dpi": DPI, "font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE + 1,
        "axes.labelsize": FONT_SIZE, "xtick.labelsize": FONT_SIZE - 1, "ytick.labelsize": FONT_SIZE - 1,
        "legend.fontsize": FONT_SIZE - 1, "axes.spines.top": False, "axes.spines.right": False,
        "savefig.bbox": "tight", "image.interpolation": "nearest",
    })


def class_color(name: str) -> str:
    return CLASS_COLORS.get(name, "#333333")


def class_palette(names=CANONICAL_8) -> list[str]:
    return [class_color(name) for name in names]


def figures_dir(out: str | os.PathLike | None = None) -> Path:
    """An explicit folder, else $HSBS_FIGURES, else figures/ at the repository root (also from notebooks/)."""
    if out is None:
        out = os.environ.get("HSBS_FIGURES")
    if out is None:
        out = repo_root() / "figures"
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig, name: str, out: str | os.PathLike | None = None, formats=("png", "pdf"), *,
                outputs: OutputFolder | None = None) -> list[Path]:
    """Write ``fig`` as NAME.png and NAME.pdf into the figures folder (atomically); returns the paths.

    With ``outputs`` (a command's folder, :mod:`hsbs_lib.outputs`) the files go there under the output rule:
    every format is checked before any is written, and each is recorded in the folder's manifest."""
    folder = outputs.folder if outputs is not None else figures_dir(out)
    names = [f"{name}.{fmt}" for fmt in formats]
    if outputs is not None:
        outputs.check(names)
    paths = []
    for file_name, fmt in zip(names, formats):
        # PDFs carry a creation date by default; drop it so regenerated figures are byte-stable.
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}

        def write(path: Path, fmt: str = fmt, metadata: dict = metadata) -> None:
            fig.savefig(path, dpi=DPI, metadata=metadata, format=fmt)

        paths.append(outputs.write(file_name, write) if outputs is not None
                     else atomic_write(folder / file_name, write))
    return paths


apply_style()
