"""Interactive explorers for JupyterLab (ipywidgets), each with a static matplotlib fallback.

- :func:`synthfer_explorer`: expression, intensity, yaw, identity and nuisance controls; the face and
  its four region masks redraw live.
- :func:`attention_explorer`: image, method and layer; the attention overlay and, with SynthFER masks,
  its energy share and pointing-game hit.
- :func:`similarity_explorer`: how rare one class is in a batch; the BSA similarity matrix and what each
  minority sample attends to.
- :func:`confusion_explorer`: one button per confusion-matrix cell; a click shows that cell's faces.

``static=None`` picks the mode: a static Figure when ``SMOKE`` is set (headless notebook runs), when
ipywidgets is missing or when no Jupyter kernel is running; ``static=True`` forces it. Interactive mode
returns an ``ipywidgets.VBox`` with three extra attributes: ``controls`` (name -> widget),
``state`` (what the last redraw showed, as arrays) and ``redraw()``.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Mapping, Sequence

import cv2
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from hsbs_lib.data.labels import class_names
from hsbs_lib.data.synthfer import (EXPRESSION_CLASSES, POSE_BINS, POSE_YAW_DEGREES, REGION_NAMES, SPLITS,
                                     SUBJECTS_PER_SPLIT, render_parameters, sample_parameters)
from hsbs_lib.viz.attention import (IMAGENET_MEAN, IMAGENET_STD, attention_maps, normalize_map, overlay,
                                    to_display_images, upsample_to)
from hsbs_lib.viz.confusion import draw_confusion, confusion, normalize_rows
from hsbs_lib.viz.saliency import score_saliency
from hsbs_lib.viz.samples import REGION_COLORS
from hsbs_lib.viz.similarity import batch_similarity_maps, draw_similarity_heatmap
from hsbs_lib.viz.style import apply_style, class_color

# The renderer's own ranges, so a slider at 1 is the strongest nuisance the training data contains.
MAX_GRATING_AMPLITUDE = 0.14
CLUTTER_SHAPES = 3
MAX_LIGHT_GRADIENT = 0.4
MAX_NOISE_STD = 0.1


# ----------------------------------------------------------------------------------------------
# Mode selection and the widget container
# ----------------------------------------------------------------------------------------------

def _smoke_run() -> bool:
    return os.environ.get("SMOKE", "").strip().lower() not in ("", "0", "false", "no")


def use_static(static: bool | None = None) -> bool:
    """Resolve ``static``: None -> True when SMOKE is set, ipywidgets is missing or no kernel runs."""
    if static is not None:
        return bool(static)
    if _smoke_run():
        return True
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return True
    shell = get_ipython()
    # A terminal IPython has no kernel and so no frontend to draw widgets in.
    return shell is None or getattr(shell, "kernel", None) is None


def _widgets():
    try:
        import ipywidgets
    except ImportError as error:
        raise ImportError("interactive explorers need ipywidgets (pip install ipywidgets); "
                          "pass static=True for a plain figure") from error
    return ipywidgets


class _Redraw:
    """Calls ``draw(values)`` on every control change, showing the figure in ``output``.

    ``paused()`` lets a handler rewrite dependent controls (e.g. a layer list) without a redraw per step.
    """

    def __init__(self, box, controls: Mapping[str, Any], output, draw: Callable[[dict], tuple[Figure, dict]]):
        self.box, self.controls, self.output, self.draw = box, controls, output, draw
        self.hold = False

    @contextmanager
    def paused(self):
        self.hold, previous = True, self.hold
        try:
            yield
        finally:
            self.hold = previous

    def __call__(self, change=None) -> None:
        if self.hold:
            return
        from IPython import get_ipython
        from IPython.display import display

        values = {name: control.value for name, control in self.controls.items()}
        in_kernel = get_ipython() is not None
        if in_kernel:
            self.output.clear_output(wait=True)
        # Inside a kernel the Output widget shows a traceback in place; elsewhere the error propagates.
        with self.output:
            figure, state = self.draw(values)
            self.box.state = state
            if in_kernel:
                display(figure)
            # The figure has been rendered into the output; closing it stops pyplot from piling them up.
            plt.close(figure)


def _explorer(controls: Mapping[str, Any], draw: Callable[[dict], tuple[Figure, dict]], *,
              header=None, observe: bool = True):
    """VBox(header or the controls in a wrap-around row, Output) with ``controls``, ``state``, ``redraw``."""
    widgets = _widgets()
    output = widgets.Output()
    if header is None:
        header = widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap"))
    box = widgets.VBox([header, output])
    box.controls, box.output, box.state = dict(controls), output, {}
    redraw = _Redraw(box, box.controls, output, draw)
    box.redraw, box.pause_redraw = redraw, redraw.paused
    if observe:
        for control in box.controls.values():
            control.observe(redraw, names="value")
    redraw()
    return box


def _hide_axes(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


# ----------------------------------------------------------------------------------------------
# Images from arrays, tensors or datasets
# ----------------------------------------------------------------------------------------------

class _ImageSource:
    """Uniform access to images given as uint8 (N, S, S, 3) / (N, 3, S, S), float model inputs
    (N, 3, S, S) or a dataset with ``load_image(i)``. Only requested images are converted."""

    def __init__(self, images, *, mean: Sequence[float] | None, std: Sequence[float] | None):
        self.images, self.mean, self.std = images, mean, std
        self.from_dataset = hasattr(images, "load_image") and not hasattr(images, "shape")
        if not self.from_dataset and isinstance(images, (list, tuple)):
            self.images = np.stack([np.asarray(image) for image in images])
        if not self.from_dataset and np.ndim(self.images) != 4:
            raise ValueError(f"images must be (N, S, S, 3) or (N, 3, S, S), got shape {tuple(np.shape(self.images))}")

    def __len__(self) -> int:
        return len(self.images)

    def raw(self, indices: np.ndarray):
        """The selected images in their original form (a dataset's are stacked at the first one's size)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if self.from_dataset:
            loaded = [np.asarray(self.images.load_image(int(i))) for i in indices]
            if not loaded:
                return np.zeros((0, 1, 1, 3), np.uint8)
            height, width = loaded[0].shape[:2]
            return np.stack([image if image.shape[:2] == (height, width)
                             else cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
                             for image in loaded])
        if isinstance(self.images, Tensor):
            return self.images[torch.as_tensor(indices)]
        return np.asarray(self.images)[indices]

    def pictures(self, indices) -> np.ndarray:
        """float (k, H, W, 3) in [0, 1] for imshow."""
        return to_display_images(self.raw(indices), mean=self.mean, std=self.std)

    def model_inputs(self, indices) -> Tensor:
        """float (k, 3, S, S) normalised model inputs; float tensors (k, 3, S, S) are taken as normalised."""
        raw = self.raw(indices)
        tensor = torch.as_tensor(raw) if not isinstance(raw, Tensor) else raw
        if tensor.is_floating_point() and tensor.shape[1] == 3:
            return tensor.float()
        if tensor.shape[-1] == 3 and tensor.shape[1] != 3:
            tensor = tensor.permute(0, 3, 1, 2)
        tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
        mean = torch.tensor(self.mean if self.mean is not None else IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(self.std if self.std is not None else IMAGENET_STD).view(1, 3, 1, 1)
        return ((tensor - mean) / std).contiguous()


def _draw_thumbnails(fig, cell, pictures: np.ndarray, titles: Sequence[str], colors: Sequence[str], *,
                     columns: int, empty_text: str = "no images") -> list:
    """Thumbnails in a grid inside one GridSpec ``cell``; returns the axes."""
    count = len(pictures)
    rows = max(1, int(np.ceil(count / columns)))
    grid = cell.subgridspec(rows, columns, wspace=0.08, hspace=0.35)
    axes = []
    for slot in range(rows * columns):
        ax = fig.add_subplot(grid[slot // columns, slot % columns])
        _hide_axes(ax)
        if slot < count:
            ax.imshow(pictures[slot])
            ax.set_title(titles[slot], color=colors[slot], fontsize=7)
        elif count == 0 and slot == 0:
            ax.text(0.0, 0.5, empty_text, transform=ax.transAxes, va="center")
        axes.append(ax)
    return axes


# ----------------------------------------------------------------------------------------------
# SynthFER explorer
# ----------------------------------------------------------------------------------------------

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
    p["grating_amp"][:] = MAX_GRATING_AMPLITUDE * clutter
    shapes = int(round(CLUTTER_SHAPES * clutter))
    # The renderer draws clutter shape k when its first parameter is below 0.75.
    p["clutter"][0, :, 0] = np.where(np.arange(CLUTTER_SHAPES) < shapes, 0.0, 1.0)
    p["light_gradient"][:] = MAX_LIGHT_GRADIENT * float(np.clip(lighting, 0.0, 1.0))
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
        "noise": widgets.FloatSlider(value=0.0, min=0.0, max=MAX_NOISE_STD, step=0.01, description="noise"),
        "blur": widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.1, description="blur"),
        "occluder": widgets.Checkbox(value=False, description="occluder"),
    }
    return _explorer(controls, draw)


# ----------------------------------------------------------------------------------------------
# Attention explorer
# ----------------------------------------------------------------------------------------------

class _AttentionCache:
    """attention_maps per model, computed once for all images (in chunks) when first asked for."""

    def __init__(self, models: Mapping[str, nn.Module], inputs: Tensor, chunk: int = 32):
        self.models, self.inputs, self.chunk = models, inputs, chunk
        self.maps: dict[str, dict[str, Tensor]] = {}

    def __getitem__(self, method: str) -> dict[str, Tensor]:
        if method not in self.maps:
            parts = [attention_maps(self.models[method], self.inputs[start:start + self.chunk])
                     for start in range(0, len(self.inputs), self.chunk)]
            self.maps[method] = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
        return self.maps[method]


def _mask_outline(ax, masks: np.ndarray) -> None:
    """Region outlines (4, S, S) drawn in the region colours."""
    for k, name in enumerate(REGION_NAMES[:len(masks)]):
        if masks[k].any():
            ax.contour(masks[k].astype(float), levels=[0.5], colors=[REGION_COLORS[name]], linewidths=0.8)


def _image_scores(heat: Tensor, masks: np.ndarray | None, tolerance_px: int) -> dict[str, float]:
    if masks is None:
        return {}
    region_names = REGION_NAMES if len(masks) == len(REGION_NAMES) else None
    return score_saliency(heat[None], masks[None], tolerance_px=tolerance_px, region_names=region_names)


def attention_explorer(models: Mapping[str, nn.Module], images, masks=None, *,
                       mean: Sequence[float] | None = IMAGENET_MEAN, std: Sequence[float] | None = IMAGENET_STD,
                       static: bool | None = None, alpha: float = 0.5, tolerance_px: int = 0):
    """Pick an image, a method and a layer or scale; see the attention overlay and how it scores.

    models: ``{"baseline": model, "hsbs": model, ...}``; images: uint8 (N, S, S, 3) / (N, 3, S, S) or
    normalised float (N, 3, S, S) inputs (``mean``/``std`` normalise the former, denormalise the latter);
    masks: bool (N, 4, S, S) SynthFER regions or None. With masks, each map gets its energy share inside
    the regions (chance = their area share) and whether its peak hits them (pointing game).
    Static mode draws image 0: one row per method, one column per map.
    """
    if not models:
        raise ValueError("attention_explorer needs at least one model")
    source = _ImageSource(images, mean=mean, std=std)
    indices = np.arange(len(source))
    inputs, pictures = source.model_inputs(indices), source.pictures(indices)
    masks = None if masks is None else np.asarray(masks.cpu() if isinstance(masks, Tensor) else masks).astype(bool)
    if masks is not None and (masks.ndim != 4 or len(masks) != len(pictures)):
        raise ValueError(f"masks must be (N, R, S, S) with N = {len(pictures)} images, got {masks.shape}")
    cache = _AttentionCache(models, inputs)

    if use_static(static):
        return _plot_attention_grid(cache, pictures, masks, 0, alpha=alpha, tolerance_px=tolerance_px)

    def draw(values: dict) -> tuple[Figure, dict]:
        return _plot_attention_choice(cache, pictures, masks, values["image"], values["method"], values["layer"],
                                      alpha=alpha, tolerance_px=tolerance_px)

    widgets = _widgets()
    methods = list(models)
    layers = list(cache[methods[0]])
    controls = {
        "image": widgets.IntSlider(value=0, min=0, max=len(pictures) - 1, description="image"),
        "method": widgets.Dropdown(options=methods, value=methods[0], description="method"),
        "layer": widgets.Dropdown(options=layers, value=layers[-1] if "layer4" not in layers else "layer4",
                                  description="layer"),
    }
    box = _explorer(controls, draw, observe=False)

    def method_changed(change) -> None:
        options = list(cache[change["new"]])
        with box.pause_redraw():
            previous = controls["layer"].value
            controls["layer"].options = options
            controls["layer"].value = previous if previous in options else options[-1]
        box.redraw()

    controls["method"].observe(method_changed, names="value")
    controls["image"].observe(box.redraw, names="value")
    controls["layer"].observe(box.redraw, names="value")
    return box


def _plot_attention_choice(cache: _AttentionCache, pictures: np.ndarray, masks: np.ndarray | None, image: int,
                           method: str, layer: str, *, alpha: float, tolerance_px: int) -> tuple[Figure, dict]:
    """Input with region outlines, the overlay with its peak, and per-region energy against chance."""
    apply_style()
    heat = cache[method][layer][image]
    picture = pictures[image]
    blended = overlay(picture, heat, alpha)
    scores = _image_scores(heat, None if masks is None else masks[image], tolerance_px)
    columns = 3 if scores else 2
    fig, axes = plt.subplots(1, columns, figsize=(2.4 * columns + (0.6 if scores else 0), 2.6))
    axes[0].imshow(picture)
    axes[0].set_title(f"image {image}")
    axes[1].imshow(blended)
    peak = np.unravel_index(int(np.argmax(upsample_to(normalize_map(heat), picture.shape[:2]).numpy())),
                            picture.shape[:2])
    axes[1].plot(peak[1], peak[0], marker="x", color="white", markersize=8, markeredgewidth=2)
    axes[1].set_title(f"{method} / {layer}")
    for ax in axes[:2]:
        _hide_axes(ax)
    state = {"image": image, "method": method, "layer": layer, "overlay": blended, "peak": peak}
    if scores:
        _mask_outline(axes[0], masks[image])
        names = [name for name in REGION_NAMES if f"energy_share/{name}" in scores]
        shares = [scores[f"energy_share/{name}"] for name in names]
        chances = [scores[f"chance_energy_share/{name}"] for name in names]
        positions = np.arange(len(names))
        axes[2].barh(positions, shares, color=[REGION_COLORS[name] for name in names])
        axes[2].scatter(chances, positions, marker="|", s=200, color="black", label="chance (area)", zorder=3)
        axes[2].set_yticks(positions, names)
        axes[2].invert_yaxis()
        axes[2].set_xlim(0, max(0.05, 1.2 * max(shares + chances)))
        axes[2].set_xlabel("energy share")
        axes[2].legend(loc="lower right", frameon=False, fontsize=7)
        hit = "hit" if scores["pointing_hit_rate"] > 0.5 else "miss"
        axes[2].set_title(f"all regions {scores['energy_share']:.2f} "
                          f"(chance {scores['chance_energy_share']:.2f}), peak: {hit}")
        state.update(energy_share=scores["energy_share"], pointing_hit=scores["pointing_hit_rate"] > 0.5,
                     chance_energy_share=scores["chance_energy_share"])
    fig.tight_layout()
    return fig, state


def _plot_attention_grid(cache: _AttentionCache, pictures: np.ndarray, masks: np.ndarray | None, image: int, *,
                         alpha: float, tolerance_px: int) -> Figure:
    """Static view of one image: rows = methods, columns = the input then every map of that method."""
    apply_style()
    methods = list(cache.models)
    layers_by_method = {method: list(cache[method]) for method in methods}
    columns = 1 + max(len(layers) for layers in layers_by_method.values())
    fig, axes = plt.subplots(len(methods), columns, figsize=(1.6 * columns, 1.75 * len(methods) + 0.3),
                             squeeze=False)
    for row, method in enumerate(methods):
        axes[row, 0].imshow(pictures[image])
        if masks is not None:
            _mask_outline(axes[row, 0], masks[image])
        axes[row, 0].set_ylabel(method)
        for column, layer in enumerate(layers_by_method[method], start=1):
            heat = cache[method][layer][image]
            axes[row, column].imshow(overlay(pictures[image], heat, alpha))
            scores = _image_scores(heat, None if masks is None else masks[image], tolerance_px)
            title = layer
            if scores:
                title += f"\nE {scores['energy_share']:.2f} " + ("hit" if scores["pointing_hit_rate"] > 0.5 else "miss")
            axes[row, column].set_title(title, fontsize=7)
    for ax in axes.flat:
        _hide_axes(ax)
    axes[0, 0].set_title("input" + (" + regions" if masks is not None else ""), fontsize=7)
    fig.suptitle(f"attention on image {image}" + ("  (E = energy share in regions)" if masks is not None else ""))
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# Batch-similarity explorer
# ----------------------------------------------------------------------------------------------

def compose_batch(labels, *, minority: int, share: float, batch_size: int, seed: int = 0) -> np.ndarray:
    """Indices of a batch in which class ``minority`` has ``share`` of the places, the rest split evenly
    over the other classes present in ``labels`` (N,). At least one minority sample when share > 0.

    Deterministic for a given seed; classes with too few samples give their places to the others.
    Returns int64 (B,) with B = min(batch_size, N), grouped by class.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    rng = np.random.default_rng(seed)
    pools = {int(k): rng.permutation(np.flatnonzero(labels == k)) for k in np.unique(labels)}
    total = min(int(batch_size), len(labels))
    available = len(pools.get(int(minority), ()))
    wanted = int(round(share * total))
    wanted = max(wanted, 1) if share > 0 else 0
    taken = {int(minority): min(wanted, available, total)} if available else {}
    others = [k for k in pools if k != int(minority)]
    remaining = total - sum(taken.values())
    taken.update({k: 0 for k in others})
    # Round-robin over the other classes, so every class gets an equal share until its pool runs out.
    while remaining > 0 and others:
        progressed = False
        for k in others:
            if remaining > 0 and taken[k] < len(pools[k]):
                taken[k] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            break
    chosen = [pools[k][:count] for k, count in sorted(taken.items()) if count]
    return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, np.int64)


@torch.no_grad()
def batch_similarity(model: nn.Module, images: Tensor) -> tuple[Tensor, str]:
    """The (B, B) similarity a model assigns within one batch, and what it is.

    HSBS: ``model.similarity(x)`` in eval mode (BSA's attention weights). Other models with a
    ``bsa_similarity`` map: :func:`batch_similarity_maps`. Models without BSA: cosine similarity of the
    pooled eval features, for comparison.
    """
    was_training = model.training
    model.eval()
    try:
        if callable(getattr(model, "similarity", None)) and getattr(model, "bsa", True) is not None:
            return model.similarity(images.to(next(model.parameters()).device)).float().cpu(), "BSA similarity"
        similarity = batch_similarity_maps(model, images)
        if similarity is not None:
            return similarity, "BSA similarity"
        features = model(images.to(next(model.parameters()).device)).features.float().cpu()
        normalised = torch.nn.functional.normalize(features, dim=1)
        return normalised @ normalised.T, "feature cosine similarity (no BSA)"
    finally:
        model.train(was_training)


def _dataset_arrays(data) -> tuple[Any, np.ndarray, tuple[str, ...]]:
    """(images, labels (N,), class names) from a dataset, a dict or (images, labels)."""
    if isinstance(data, Mapping):
        images, labels, classes = data["images"], data["labels"], data.get("classes")
    elif isinstance(data, (tuple, list)) and len(data) in (2, 3):
        images, labels = data[0], data[1]
        classes = data[2] if len(data) == 3 else None
    elif hasattr(data, "load_image") and hasattr(data, "targets"):
        images = data.images if hasattr(data, "images") else data
        labels, classes = data.targets, getattr(data, "classes", None)
    else:
        raise TypeError("expected a FERDataset, a dict with 'images' and 'labels', or a tuple (images, labels); "
                        f"got {type(data).__name__}")
    labels = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels, dtype=np.int64).reshape(-1)
    if classes is None:
        classes = class_names(8 if labels.size and labels.max() >= 7 else 7)
    return images, labels, tuple(classes)


def similarity_explorer(model: nn.Module, dataset_or_arrays, *, batch_size: int = 32,
                        mean: Sequence[float] | None = IMAGENET_MEAN, std: Sequence[float] | None = IMAGENET_STD,
                        static: bool | None = None, minority: str = "fear", minority_share: float = 0.1,
                        top_k: int = 3, max_queries: int = 4, seed: int = 0):
    """Choose how rare a class is in a batch; see the batch similarity and what its samples attend to.

    dataset_or_arrays: a FERDataset, ``{"images", "labels"[, "classes"]}`` or ``(images, labels)`` with
    images uint8 (N, S, S, 3) or normalised float (N, 3, S, S). The batch gives ``minority`` the share
    ``minority_share`` (at least one sample) and splits the rest evenly; S (B, B) is drawn sorted by label,
    and each minority sample (up to ``max_queries``) is shown with its ``top_k`` most similar other samples.
    """
    images, labels, classes = _dataset_arrays(dataset_or_arrays)
    source = _ImageSource(images, mean=mean, std=std)
    if len(source) != len(labels):
        raise ValueError(f"{len(source)} images but {len(labels)} labels")
    present = [classes[k] for k in np.unique(labels)]
    if minority not in present:
        raise ValueError(f"minority class {minority!r} does not occur in the data; present: {present}")

    def draw(values: dict) -> tuple[Figure, dict]:
        return _plot_similarity_choice(model, source, labels, classes, minority=values["minority"],
                                       share=values["share"], batch_size=batch_size, top_k=values["top_k"],
                                       max_queries=max_queries, seed=values["seed"])

    defaults = {"minority": minority, "share": minority_share, "top_k": top_k, "seed": seed}
    if use_static(static):
        return draw(defaults)[0]
    widgets = _widgets()
    controls = {
        "minority": widgets.Dropdown(options=present, value=minority, description="minority"),
        "share": widgets.FloatSlider(value=minority_share, min=0.0, max=0.5, step=0.01, description="share",
                                     readout_format=".2f"),
        "top_k": widgets.IntSlider(value=top_k, min=1, max=8, description="top-k"),
        "seed": widgets.IntText(value=seed, description="batch seed"),
    }
    return _explorer(controls, draw)


def _plot_similarity_choice(model: nn.Module, source: _ImageSource, labels: np.ndarray, classes: Sequence[str], *,
                            minority: str, share: float, batch_size: int, top_k: int, max_queries: int,
                            seed: int) -> tuple[Figure, dict]:
    apply_style()
    minority_index = classes.index(minority)
    indices = compose_batch(labels, minority=minority_index, share=share, batch_size=batch_size, seed=seed)
    batch_labels = labels[indices]
    matrix, kind = batch_similarity(model, source.model_inputs(indices))
    matrix = matrix.numpy()
    queries = np.flatnonzero(batch_labels == minority_index)
    pictures = source.pictures(indices)
    top_k = max(1, min(int(top_k), len(indices) - 1))
    attended = {}
    for query in queries:
        # A sample's weight on itself says nothing about its neighbours, so it is left out of the ranking.
        ranking = [int(j) for j in np.argsort(-matrix[query], kind="stable") if j != query][:top_k]
        attended[int(query)] = [(j, float(matrix[query, j])) for j in ranking]

    shown = queries[:max_queries]
    fig = plt.figure(figsize=(4.6 + 1.05 * (top_k + 1), max(3.8, 1.25 * max(len(shown), 1) + 0.8)))
    grid = fig.add_gridspec(1, 2, width_ratios=[4.6, 1.05 * (top_k + 1)], wspace=0.15)
    heat_ax = fig.add_subplot(grid[0])
    draw_similarity_heatmap(heat_ax, matrix, batch_labels, classes, colorbar_shrink=0.7)
    heat_ax.set_title(f"{kind}\n{len(queries)} {minority} of {len(indices)}")
    if len(shown):
        rows = grid[1].subgridspec(len(shown), top_k + 1, wspace=0.08, hspace=0.45)
        for row, query in enumerate(shown):
            entries = [(int(query), None)] + attended[int(query)]
            for column, (j, weight) in enumerate(entries):
                ax = fig.add_subplot(rows[row, column])
                ax.imshow(pictures[j])
                name = classes[batch_labels[j]]
                ax.set_title(f"{name[:8]}" if weight is None else f"{name[:8]} {weight:.2f}",
                             color=class_color(name), fontsize=7)
                _hide_axes(ax)
                if column == 0:
                    ax.set_ylabel("query", fontsize=7)
    else:
        ax = fig.add_subplot(grid[1])
        _hide_axes(ax)
        ax.text(0.0, 0.5, f"no {minority} sample in this batch\n(raise the share)", transform=ax.transAxes)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.86, bottom=0.12)
    state = {"indices": indices, "labels": batch_labels, "similarity": matrix, "kind": kind, "attended": attended}
    return fig, state


# ----------------------------------------------------------------------------------------------
# Confusion explorer
# ----------------------------------------------------------------------------------------------

def cell_members(y_true, y_pred, true_class: int, predicted_class: int) -> np.ndarray:
    """Indices (k,) of the samples with label ``true_class`` predicted as ``predicted_class``."""
    y_true, y_pred = (np.asarray(v.cpu() if isinstance(v, Tensor) else v).reshape(-1) for v in (y_true, y_pred))
    return np.flatnonzero((y_true == true_class) & (y_pred == predicted_class))


def most_confused_cell(counts: np.ndarray) -> tuple[int, int]:
    """(true, predicted) of the largest off-diagonal count; the diagonal's largest when nothing is confused."""
    off_diagonal = np.asarray(counts, dtype=np.float64).copy()
    np.fill_diagonal(off_diagonal, -1)
    if off_diagonal.max() > 0:
        return tuple(int(v) for v in np.unravel_index(int(np.argmax(off_diagonal)), off_diagonal.shape))
    diagonal = int(np.argmax(np.diag(counts)))
    return diagonal, diagonal


def _plot_cell_faces(fig, cell, source: _ImageSource, members: np.ndarray, true_name: str, predicted_name: str,
                     max_faces: int) -> None:
    shown = members[:max_faces]
    pictures = source.pictures(shown) if len(shown) else np.zeros((0, 1, 1, 3), np.float32)
    columns = int(np.ceil(np.sqrt(max(len(shown), 1))))
    _draw_thumbnails(fig, cell, pictures, [f"#{i}" for i in shown], ["#333333"] * len(shown),
                     columns=max(columns, 2), empty_text="no images in this cell")
    verb = "correct" if true_name == predicted_name else f"predicted {predicted_name}"
    fig.suptitle(f"true {true_name}, {verb}: {len(members)} images (showing {len(shown)})")


def confusion_explorer(y_true, y_pred, images, classes: Sequence[str] | None = None, *,
                       mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                       static: bool | None = None, max_faces: int = 16):
    """A confusion matrix whose cells are buttons; clicking one shows up to ``max_faces`` of its faces.

    y_true, y_pred: (N,) class indices; images: (N, S, S, 3) uint8, normalised (N, 3, S, S) floats
    (give ``mean``/``std``) or a dataset in the same order. Static mode draws the matrix with the most
    confused cell outlined next to that cell's faces.
    """
    y_true = np.asarray(y_true.cpu() if isinstance(y_true, Tensor) else y_true, dtype=np.int64).reshape(-1)
    y_pred = np.asarray(y_pred.cpu() if isinstance(y_pred, Tensor) else y_pred, dtype=np.int64).reshape(-1)
    source = _ImageSource(images, mean=mean, std=std)
    if not len(y_true) == len(y_pred) == len(source):
        raise ValueError(f"y_true, y_pred and images differ in length: {len(y_true)}, {len(y_pred)}, {len(source)}")
    if classes is None:
        classes = class_names(8 if max(y_true.max(initial=0), y_pred.max(initial=0)) >= 7 else 7)
    classes = list(classes)
    counts = confusion(y_true, y_pred, len(classes))
    default_cell = most_confused_cell(counts)

    def faces(cell: tuple[int, int]) -> tuple[Figure, dict]:
        apply_style()
        members = cell_members(y_true, y_pred, *cell)
        fig = plt.figure(figsize=(5.0, 5.0))
        _plot_cell_faces(fig, fig.add_gridspec(1, 1)[0], source, members, classes[cell[0]], classes[cell[1]],
                         max_faces)
        return fig, {"cell": cell, "members": members, "shown": members[:max_faces]}

    if use_static(static):
        apply_style()
        fig = plt.figure(figsize=(10.0, 4.6))
        grid = fig.add_gridspec(1, 2, width_ratios=[1.0, 1.0], wspace=0.3)
        matrix_ax = fig.add_subplot(grid[0])
        draw_confusion(matrix_ax, counts, classes, True, None, cbar=False)
        matrix_ax.add_patch(Rectangle((default_cell[1], default_cell[0]), 1, 1, fill=False, edgecolor="red",
                                      linewidth=2))
        _plot_cell_faces(fig, grid[1], source, cell_members(y_true, y_pred, *default_cell),
                         classes[default_cell[0]], classes[default_cell[1]], max_faces)
        return fig

    widgets = _widgets()
    shares = normalize_rows(counts)
    blues = colormaps["Blues"]
    header = [widgets.Label("true \\ predicted")] + [widgets.Label(name[:9]) for name in classes]
    cells, buttons = [], {}
    selected = widgets.Text(value=f"{default_cell[0]},{default_cell[1]}", description="cell", disabled=True)
    for t, true_name in enumerate(classes):
        cells.append(widgets.Label(true_name))
        for p in range(len(classes)):
            button = widgets.Button(description=str(int(counts[t, p])), tooltip=f"true {true_name}, "
                                    f"predicted {classes[p]}: {shares[t, p]:.0%} of the row",
                                    layout=widgets.Layout(width="auto", height="28px"))
            button.style.button_color = to_hex(blues(0.1 + 0.85 * shares[t, p]))
            button.style.text_color = "white" if shares[t, p] > 0.5 else "black"
            # Each button writes its cell into `selected`; the redraw observes that one control.
            button.on_click(lambda _, cell=f"{t},{p}": setattr(selected, "value", cell))
            buttons[(t, p)] = button
            cells.append(button)
    grid = widgets.GridBox(header + cells, layout=widgets.Layout(
        grid_template_columns=f"110px repeat({len(classes)}, minmax(44px, 1fr))", grid_gap="2px"))

    def draw(values: dict) -> tuple[Figure, dict]:
        t, p = (int(v) for v in values["cell"].split(","))
        return faces((t, p))

    box = _explorer({"cell": selected}, draw, header=widgets.VBox([grid, selected]))
    box.buttons = buttons
    return box
