"""The SynthFER explorer: expression, intensity, yaw, identity and nuisance controls over one face and its
region masks. The sliders span the renderer's own ranges (:mod:`hsbs_lib.data.synthfer.params`), so a
slider at its maximum is the strongest nuisance the training data contains."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from hsbs_lib.data.synthfer import render_parameters
from hsbs_lib.data.synthfer.params import (CLUTTER_SHAPES, EXPRESSION_CLASSES, GRATING_AMPLITUDE_MAX,
                                           LIGHT_GRADIENT_MAX, NOISE_MAX, POSE_BINS, POSE_YAW_DEGREES, REGION_NAMES,
                                           SPLITS, SUBJECTS_PER_SPLIT, sample_parameters)
from hsbs_lib.viz.interactive.widgets import _explorer, _hide_axes, _widgets, use_static
from hsbs_lib.viz.samples import REGION_COLORS
from hsbs_lib.viz.style import apply_style


def render_controlled_face(*, expression: str = "happiness", intensity: float = 0.8, yaw_bin: int = 2,
                           identity: int | None = None, clutter: float = 0.5, lighting: float = 0.5,
                           noise: float = 0.0, blur: float = 0.0, occluder: bool = False, size: int = 128,
                           index: int = 0, seed: int = 0, split: str = "train") -> dict[str, np.ndarray]:
    """One SynthFER face (image ``index`` of (seed, split)) with chosen expression, pose and nuisances.

    identity: a subject id (None keeps the image's own); clutter: background gratings and shapes, 0..1;
    lighting: strength of the lighting gradient, 0..1; noise: sensor noise std on the [0, 1] scale;
    blur: blend towards a blurred copy, 0..1.
    Returns "image" uint8 (S, S, 3), "masks" bool (4, S, S) in REGION_NAMES order, "subject" int.
    """
    if expression not in EXPRESSION_CLASSES:
        raise ValueError(f"expression must be one of {list(EXPRESSION_CLASSES)}, got {expression!r}")
    if not 0 <= int(yaw_bin) < POSE_BINS:
        raise ValueError(f"yaw_bin must be in 0..{POSE_BINS - 1}, got {yaw_bin}")
    p = sample_parameters(np.array([index]), seed=seed, split=split)
    p["label"][:] = EXPRESSION_CLASSES.index(expression)
    p["intensity"][:] = float(np.clip(intensity, 0.0, 1.0))
    p["pose"][:] = int(yaw_bin)
    p["yaw"][:] = np.radians(POSE_YAW_DEGREES[int(yaw_bin)])
    if identity is not None:
        p["subject"][:] = int(identity)
    clutter = float(np.clip(clutter, 0.0, 1.0))
    p["grating_amp"][:] = GRATING_AMPLITUDE_MAX * clutter
    shapes = int(round(CLUTTER_SHAPES * clutter))
    # The renderer draws clutter shape k when its first parameter is below 0.75.
    p["clutter"][0, :, 0] = np.where(np.arange(CLUTTER_SHAPES) < shapes, 0.0, 1.0)
    p["light_gradient"][:] = LIGHT_GRADIENT_MAX * float(np.clip(lighting, 0.0, 1.0))
    p["noise_std"][:] = float(max(noise, 0.0))
    p["blur"][:] = float(np.clip(blur, 0.0, 1.0))
    p["occluder"][:] = bool(occluder)
    rendered = render_parameters(p, size=size)
    return {"image": rendered["images"][0], "masks": rendered["masks"][0], "subject": int(p["subject"][0])}


def _plot_face_and_masks(face: dict[str, np.ndarray], title: str, *, alpha: float = 0.5) -> Figure:
    """The face, then each region mask tinted over it with its area share."""
    apply_style()
    image = face["image"].astype(np.float32) / 255.0
    fig, axes = plt.subplots(1, 1 + len(REGION_NAMES), figsize=(1.9 * (1 + len(REGION_NAMES)), 2.3))
    axes[0].imshow(image)
    axes[0].set_title(title)
    for k, name in enumerate(REGION_NAMES):
        tinted = image.copy()
        mask = face["masks"][k]
        tinted[mask] = (1 - alpha) * tinted[mask] + alpha * np.asarray(REGION_COLORS[name], np.float32)
        axes[k + 1].imshow(tinted)
        axes[k + 1].set_title(f"{name} ({mask.mean():.1%})")
    for ax in axes:
        _hide_axes(ax)
    fig.tight_layout()
    return fig


def synthfer_explorer(*, size: int = 128, static: bool | None = None, expression: str = "happiness",
                      intensity: float = 0.8, yaw_bin: int = 2, index: int = 0, seed: int = 0):
    """Sliders for expression, intensity, yaw bin, identity and nuisances over one SynthFER face.

    Returns a Figure (static) or a VBox whose ``state`` holds ``image`` (S, S, 3) and ``masks`` (4, S, S).
    """
    subject = int(sample_parameters(np.array([index]), seed=seed, split="train")["subject"][0])
    defaults = dict(expression=expression, intensity=intensity, yaw_bin=yaw_bin, identity=subject, clutter=0.5,
                    lighting=0.5, noise=0.0, blur=0.0, occluder=False)

    def draw(values: dict) -> tuple[Figure, dict]:
        face = render_controlled_face(**values, size=size, index=index, seed=seed)
        yaw = POSE_YAW_DEGREES[values["yaw_bin"]]
        title = f"{values['expression']} {values['intensity']:.2f}, yaw {yaw:+.0f}\N{DEGREE SIGN}"
        return _plot_face_and_masks(face, title), face

    if use_static(static):
        return draw(defaults)[0]
    widgets = _widgets()
    style = {"description_width": "initial"}
    controls = {
        "expression": widgets.Dropdown(options=list(EXPRESSION_CLASSES), value=expression, description="expression"),
        "intensity": widgets.FloatSlider(value=intensity, min=0.0, max=1.0, step=0.05, description="intensity"),
        "yaw_bin": widgets.IntSlider(value=yaw_bin, min=0, max=POSE_BINS - 1, description="yaw bin"),
        "identity": widgets.BoundedIntText(value=subject, min=0, max=len(SPLITS) * SUBJECTS_PER_SPLIT - 1,
                                           description="identity", style=style),
        "clutter": widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.1, description="clutter"),
        "lighting": widgets.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.1, description="lighting"),
        "noise": widgets.FloatSlider(value=0.0, min=0.0, max=NOISE_MAX, step=0.005, description="noise",
                                     readout_format=".3f"),
        "blur": widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.1, description="blur"),
        "occluder": widgets.Checkbox(value=False, description="occluder"),
    }
    return _explorer(controls, draw)
