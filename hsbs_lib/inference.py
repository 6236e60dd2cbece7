"""Inference on real photos (``hsbs predict``) and model export (``hsbs export``).

A photo goes through: decode -> detect faces (OpenCV's bundled Haar cascade by default, or any detector of
:mod:`hsbs_lib.data.faces`: ``--detector yunet:PATH`` or ``module:callable``), or take the whole image as an
aligned face -> optionally rotate so the eyes are level (``--align``, when the detector gives eyes) -> square
crop with a margin -> the checkpoint's own resize and normalisation -> eval-mode model -> label names stored
in the checkpoint.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from hsbs_lib.config import check_input_size, memory_bytes
from hsbs_lib.constants import IMAGENET_NORMALIZATION
from hsbs_lib.data.faces import Face, FaceDetector, HaarDetector, align_face, as_face, face_detector
from hsbs_lib.data.images import decode_image
from hsbs_lib.data.pipeline.transforms import model_inputs
from hsbs_lib.engine.build import resolve_device
from hsbs_lib.extras import require
from hsbs_lib.engine.checkpoint import (DEFAULT_SHIPPED, SHIPPED_MODELS, is_shipped_name, load_model_from_checkpoint,
                                        non_finite_entries, resolve_checkpoint, shipped_checkpoint)
from hsbs_lib.losses.hst import activation_attention
from hsbs_lib.models.base import LogitsOnly
from hsbs_lib.outputs import OutputFolder

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}


@dataclass
class FacePrediction:
    """One face found in one file: its box (x, y, w, h) in pixels, the label and all probabilities."""

    path: str
    box: tuple[int, int, int, int]
    label: str
    confidence: float
    probabilities: dict[str, float]
    attention: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        record = asdict(self)
        record.pop("attention")
        record["box"] = list(self.box)
        return record


@dataclass
class SkippedFile:
    path: str
    reason: str


# --------------------------------------------------------------------------------------------- faces
def detect_faces(image: np.ndarray, *, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_size: int = 24) -> list[tuple[int, int, int, int]]:
    """Face boxes (x, y, w, h) in a uint8 (H, W, 3) RGB image, largest first, by OpenCV's Haar cascade (the
    other detectors: :mod:`hsbs_lib.data.faces`)."""
    detector = HaarDetector(scale_factor=scale_factor, min_neighbors=min_neighbors, min_size=min_size)
    return [face.box for face in detector(image)]


#: --margin's range: from a crop 0.2 times as wide as the face's box to one 9 times as wide.
MARGIN_RANGE = (-0.4, 4.0)


def crop_face(image: np.ndarray, box: Sequence[int], *, margin: float = 0.2) -> np.ndarray:
    """Square crop around ``box`` enlarged by ``margin`` on each side; borders padded by replication.

    image: (H, W, 3) uint8; returns (s, s, 3) uint8 with s = max(w, h) * (1 + 2 * margin).
    """
    x, y, w, h = box
    side = int(round(max(w, h) * (1 + 2 * margin)))
    available = memory_bytes()
    if side < 1 or (available is not None and 3 * side * side > available):
        raise ValueError(f"--margin {margin} makes a crop of {side} pixels around a face of {max(w, h)}: "
                         f"{'empty' if side < 1 else 'more than this machine can hold'}")
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    height, width = image.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - width, y0 + side - height)
    if pad:
        image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        x0, y0 = x0 + pad, y0 + pad
    return np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side])


def face_crop(image: np.ndarray, face: Face, *, margin: float = 0.2, align: bool = False) -> np.ndarray:
    """:func:`crop_face` of ``face``, from the image rotated about its eyes so that they are level when
    ``align`` and the detector gave the eyes (:func:`~hsbs_lib.data.faces.align_face`)."""
    if align and face.eyes is not None:
        image, box = align_face(image, face)
        return crop_face(image, box, margin=margin)
    return crop_face(image, face.box, margin=margin)


# ------------------------------------------------------------------------------------------ predictor
class Predictor:
    """A checkpoint ready for inference: model in eval mode plus its own preprocessing and labels."""

    def __init__(self, checkpoint: str | Path, *, device: str = "cpu"):
        self.device = torch.device(resolve_device(device))
        self.model, meta = load_model_from_checkpoint(checkpoint, device=self.device)
        broken = non_finite_entries(self.model.state_dict())
        if broken:  # its outputs would be NaN: refuse rather than print meaningless (and invalid JSON) numbers
            raise ValueError(f"checkpoint {checkpoint} holds non-finite weights ({', '.join(broken[:3])}"
                             f"{' ...' if len(broken) > 3 else ''}); it comes from a diverged run")
        self.model.eval()
        self.classes: list[str] = list(meta["classes"])
        self.input_size: int = int(meta["input_size"])
        check_input_size(self.input_size, name=f"checkpoint {checkpoint}'s stored input_size")
        self.normalization: dict = dict(meta.get("normalization") or IMAGENET_NORMALIZATION)

    def preprocess(self, faces: Sequence[np.ndarray]) -> Tensor:
        """uint8 (h, w, 3) crops -> normalised float batch (B, 3, S, S)."""
        return model_inputs(list(faces), self.normalization, size=self.input_size).to(self.device)

    @torch.no_grad()
    def classify(self, faces: Sequence[np.ndarray], *, with_attention: bool = False):
        """Probabilities (B, K) for face crops, plus attention maps (B, s, s) in [0, 1] if asked."""
        output = self.model(self.preprocess(faces))
        probabilities = output.logits.float().softmax(dim=1).cpu()
        attention = None
        if with_attention:
            stage = output.maps.get("features/layer3")
            if stage is not None:
                heat = activation_attention(stage)
                heat = heat - heat.amin(dim=(1, 2), keepdim=True)
                attention = (heat / heat.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)).cpu().numpy()
        return probabilities, attention


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders expanded to the images inside them (sorted, recursive).

    Raises FileNotFoundError for an input that does not exist or a folder that holds no image."""
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise FileNotFoundError(f"{item}: the folder holds no image file "
                                        f"({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += found
        elif item.exists():
            paths.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return paths


def predict(checkpoint: str | Path | Predictor, inputs: Iterable[str | Path] | str | Path, *, detect: bool = True,
            margin: float = 0.2, device: str = "cpu", with_attention: bool = False,
            skipped: list[SkippedFile] | None = None, detector: str | FaceDetector | None = None,
            align: bool = False) -> list[FacePrediction]:
    """Classify the expression of every face in the given images or folders.

    Unreadable files are appended to ``skipped`` (when given) and never stop the run; an input that does
    not exist, or a folder without images, raises FileNotFoundError before any work. With
    ``detect=False`` each image is taken as an already aligned face (box = the whole image).

    ``detector``: a spec or a detector of :func:`~hsbs_lib.data.faces.face_detector` (default: Haar);
    ``align``: rotate each face so that its eyes are level before cropping, where the detector gives eyes
    (YuNet does, Haar does not). The reported box is the detector's, in the photo as it is.
    """
    low, high = MARGIN_RANGE
    if not low <= margin <= high:      # NaN too: a crop of no pixels, or of gigabytes
        raise ValueError(f"--margin expects the share of a face's box added on each side, from {low} (a tighter "
                         f"crop) to {high} (a crop {1 + 2 * high:g} times as wide), got {margin}")
    if not detect and (detector is not None or align):
        raise ValueError("--detector and --align work on detected faces; --no-detect takes each image as a face")
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    paths = expand_inputs(inputs)
    find_faces = face_detector(detector) if detect else None
    predictor = checkpoint if isinstance(checkpoint, Predictor) else Predictor(checkpoint, device=device)
    results: list[FacePrediction] = []
    for path in paths:
        try:
            image = decode_image(path)
        except Exception as error:  # reported, never fatal for a folder
            if skipped is not None:
                skipped.append(SkippedFile(str(path), str(error)))
            continue
        height, width = image.shape[:2]
        faces = [as_face(found) for found in find_faces(image)] if detect else [Face((0, 0, width, height))]
        if not faces:
            if skipped is not None:
                skipped.append(SkippedFile(str(path), "no face detected (try --no-detect for aligned crops)"))
            continue
        crops = [face_crop(image, face, margin=margin, align=align) if detect else image for face in faces]
        boxes = [face.box for face in faces]
        probabilities, attention = predictor.classify(crops, with_attention=with_attention)
        if not torch.isfinite(probabilities).all():
            raise ValueError(f"{path}: the model gave non-finite probabilities (an overflow inside it)")
        for i, box in enumerate(boxes):
            probs = probabilities[i]
            best = int(probs.argmax())
            results.append(FacePrediction(
                path=str(path), box=tuple(int(v) for v in box), label=predictor.classes[best],
                confidence=float(probs[best]),
                probabilities={name: round(float(p), 6) for name, p in zip(predictor.classes, probs)},
                attention=None if attention is None else attention[i]))
    return results


def draw_overlay(image: np.ndarray, faces: Sequence[FacePrediction], *, margin: float = 0.2) -> np.ndarray:
    """Boxes, labels and (when present) the attention map blended inside each face's crop."""
    import cv2

    canvas = image.copy()
    for face in faces:
        x, y, w, h = face.box
        if face.attention is not None:
            side = int(round(max(w, h) * (1 + 2 * margin)))
            x0, y0 = int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2))
            heat = cv2.resize(face.attention.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
            colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
            xa, ya = max(x0, 0), max(y0, 0)
            xb, yb = min(x0 + side, canvas.shape[1]), min(y0 + side, canvas.shape[0])
            if xb > xa and yb > ya:
                patch = colour[ya - y0:yb - y0, xa - x0:xb - x0]
                canvas[ya:yb, xa:xb] = (0.6 * canvas[ya:yb, xa:xb] + 0.4 * patch).astype(np.uint8)
        thickness = max(1, round(max(canvas.shape[:2]) / 300))
        cv2.rectangle(canvas, (x, y), (x + w, y + h), (255, 64, 64), thickness)
        text = f"{face.label} {face.confidence:.2f}"
        scale = max(0.4, w / 250)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        ty = y - 4 if y - th - 6 > 0 else y + h + th + 4
        cv2.rectangle(canvas, (x, ty - th - 4), (x + tw + 4, ty + 2), (255, 64, 64), -1)
        cv2.putText(canvas, text, (x + 2, ty - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness)
    return canvas


def overlay_names(paths: Sequence[str | Path]) -> dict[str, str]:
    """A distinct overlay file name per input: ``STEM_pred.png``, or, for inputs sharing a stem
    (``a/face.jpg``, ``b/face.jpg``, ``a/face.png``), the path below their common folder spelled out
    (``a_face_jpg_pred.png``)."""
    paths = [str(path) for path in dict.fromkeys(str(p) for p in paths)]
    stems: dict[str, int] = {}
    for path in paths:
        stems[Path(path).stem] = stems.get(Path(path).stem, 0) + 1
    common = Path(os.path.commonpath([str(Path(p).resolve().parent) for p in paths])) if paths else Path()
    names: dict[str, str] = {}
    taken: set[str] = set()
    for path in paths:
        if stems[Path(path).stem] == 1:
            name = f"{Path(path).stem}_pred.png"
        else:
            relative = Path(path).resolve().relative_to(common)
            name = "_".join([*relative.parent.parts, relative.name.replace(".", "_")]) + "_pred.png"
        base, count = name[:-len("_pred.png")], 2
        while name in taken:   # still taken ("a_b.jpg" beside "a/b.jpg"): number it
            name, count = f"{base}_{count}_pred.png", count + 1
        taken.add(name)
        names[path] = name
    return names


def format_table(faces: Sequence[FacePrediction]) -> str:
    if not faces:
        return "no faces"
    classes = list(faces[0].probabilities)
    header = f"{'file':<32} {'box (x,y,w,h)':<20} {'label':<10} " + " ".join(f"{c[:8]:>8}" for c in classes)
    lines = [header, "-" * len(header)]
    for face in faces:
        name = Path(face.path).name[-32:]
        box = ",".join(str(v) for v in face.box)
        probs = " ".join(f"{face.probabilities[c]:8.3f}" for c in classes)
        lines.append(f"{name:<32} {box:<20} {face.label:<10} {probs}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- export
EXPORT_MARK = "hsbs export"


def check_export_paths(checkpoint: str | Path, out: Path, *, overwrite: bool = False) -> OutputFolder:
    """The export's output folder once the rule allows both files: never the checkpoint itself, never a
    model replaced by its own sidecar (``--out x.json``), and an existing file only when an earlier
    ``hsbs export`` wrote it, as the folder's manifest records (or ``overwrite``)."""
    sidecar = out.with_suffix(".json")
    if sidecar == out:
        raise ValueError(f"--out {out}: the metadata file would overwrite the exported model; "
                         "name the model .pt (TorchScript) or .onnx")
    source = resolve_checkpoint(checkpoint)
    for target in (out, sidecar):
        if target.resolve() == source.resolve():
            raise ValueError(f"--out {out} would replace the checkpoint {checkpoint} being exported; "
                             "choose another file name")
    outputs = OutputFolder(out.parent, "export", force=overwrite, reads=[source])
    outputs.check([out.name, sidecar.name])
    return outputs


def export_model(checkpoint: str | Path, out: str | Path, *, format: str = "torchscript",
                 overwrite: bool = False) -> Path:
    """Export the eval-mode model (logits only) to TorchScript (.pt) or ONNX (.onnx).

    A JSON sidecar (same name, .json) records classes, input size and normalisation, so the exported
    file can be used without hsbs_lib. Existing files are replaced only when an earlier export wrote
    them (the folder's manifest, :mod:`hsbs_lib.outputs`), or with ``overwrite`` (never the checkpoint).
    """
    if format not in ("torchscript", "onnx"):
        raise ValueError(f"unknown export format '{format}'; expected torchscript or onnx")
    out = Path(out)
    outputs = check_export_paths(checkpoint, out, overwrite=overwrite)
    predictor = Predictor(checkpoint, device="cpu")
    module = LogitsOnly(predictor.model).eval()
    example = torch.zeros(1, 3, predictor.input_size, predictor.input_size)
    if format == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(module, example, check_trace=False)
        outputs.write(out.name, lambda temporary: traced.save(str(temporary)))
    else:
        require("onnx", "ONNX export"), require("onnxscript", "ONNX export")
        outputs.write(out.name, lambda temporary: torch.onnx.export(
            module, (example,), str(temporary), input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False))
    sidecar = {"classes": predictor.classes, "input_size": predictor.input_size,
               "normalization": {"mean": list(predictor.normalization["mean"]),
                                 "std": list(predictor.normalization["std"])},
               "input": "float32 (B, 3, S, S), RGB scaled to [0, 1] then normalised", "output": "logits (B, K)",
               "written_by": EXPORT_MARK}
    outputs.write_text(out.with_suffix(".json").name, json.dumps(sidecar, indent=2))
    return out


# ------------------------------------------------------------------------------------------------- CLI
def add_predict_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("--checkpoint", default=DEFAULT_SHIPPED,
                        help=f"RUN/best.pt, or a shipped model's name (default: {DEFAULT_SHIPPED}, the package's own "
                             f"FER2013 model; its card: hsbs_lib/shipped/{DEFAULT_SHIPPED}.md)")
    parser.add_argument("--no-detect", dest="detect", action="store_false",
                        help="take each image as an already aligned face")
    parser.add_argument("--margin", type=float, default=0.2, help="crop margin around a detected box")
    parser.add_argument("--detector", metavar="SPEC",
                        help="face detector: haar (default, OpenCV's bundled cascade), yunet:PATH (OpenCV's YuNet from "
                             "an ONNX file you supply), or module:callable (your own: image -> boxes); "
                             "docs/TRAINING_OPTIONS.md")
    parser.add_argument("--align", action="store_true",
                        help="rotate each face so that its eyes are level before cropping (needs a detector that "
                             "gives eyes, e.g. yunet; haar gives none)")
    parser.add_argument("--format", choices=("table", "jsonl"), default="table")
    parser.add_argument("--save-overlay", metavar="DIR", help="write images with boxes and labels here")
    parser.add_argument("--attention", action="store_true", help="blend the attention map into overlays")
    parser.add_argument("--force", action="store_true",
                        help="replace files in --save-overlay that hsbs predict did not write (never an input)")
    parser.add_argument("--device", default="auto")


def overlay_output(folder: str | Path, inputs: Iterable[str | Path], *, force: bool = False,
                   checkpoint: str | Path | None = None) -> tuple[OutputFolder, list[Path], dict[str, str]]:
    """The overlay folder under the output rule, the input files, and each one's overlay name, all checked
    before any work: an overlay never replaces an input photo, nor a file hsbs predict did not write
    (``force``). Overlays an earlier ``hsbs predict`` wrote into an input folder are not inputs."""
    outputs = OutputFolder(folder, "predict", force=force)

    def own_overlay(path: Path) -> bool:
        try:
            name = path.resolve().relative_to(outputs.folder.resolve()).as_posix()
        except ValueError:
            return False
        return outputs.written_by_me(name)

    paths = [path for path in expand_inputs(inputs) if not own_overlay(path)]
    if not paths:
        raise FileNotFoundError(f"no input image besides the overlays hsbs predict wrote into {folder}")
    outputs.reads = [*paths, *([Path(checkpoint)] if checkpoint is not None else [])]
    names = overlay_names(paths)
    outputs.check(names.values())
    return outputs, paths, names


def run_predict(args) -> int:
    from PIL import Image

    skipped: list[SkippedFile] = []
    if is_shipped_name(args.checkpoint):
        print(f"using the shipped model '{args.checkpoint}' ({SHIPPED_MODELS[args.checkpoint][1]}; card: "
              f"{shipped_checkpoint(args.checkpoint).with_suffix('.md')}); --checkpoint RUN/best.pt uses your own",
              file=sys.stderr)
    inputs, outputs, names = args.inputs, None, {}
    if args.save_overlay:
        outputs, inputs, names = overlay_output(args.save_overlay, args.inputs, force=args.force,
                                                 checkpoint=args.checkpoint)
    if args.align and args.detect and (args.detector or "haar") == "haar":
        print("--align: the Haar cascade gives no eye landmarks, so faces are cropped unrotated (--detector "
              "yunet:PATH gives them)", file=sys.stderr)
    faces = predict(args.checkpoint, inputs, detect=args.detect, margin=args.margin, device=args.device,
                    with_attention=args.attention, skipped=skipped, detector=args.detector, align=args.align)
    if args.format == "jsonl":
        for face in faces:
            print(json.dumps(face.to_json(), allow_nan=False))
    else:
        print(format_table(faces))
    if outputs is not None:
        by_file: dict[str, list[FacePrediction]] = {}
        for face in faces:
            by_file.setdefault(face.path, []).append(face)
        for path, file_faces in by_file.items():
            overlay = draw_overlay(decode_image(path), file_faces, margin=args.margin)
            outputs.write(names[path], lambda temporary: Image.fromarray(overlay).save(temporary, format="PNG"))
        print(f"overlays written to {outputs.folder}", file=sys.stderr)
    for item in skipped:
        print(f"skipped {item.path}: {item.reason}", file=sys.stderr)
    return 0


def add_export_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="RUN/best.pt")
    parser.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript")
    parser.add_argument("--out", help="output file (default: next to the checkpoint)")
    parser.add_argument("--force", "--overwrite", dest="overwrite", action="store_true",
                        help="replace existing files at --out (never the checkpoint itself)")


def run_export(args) -> int:
    suffix = ".onnx" if args.format == "onnx" else ".ts.pt"
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(suffix)
    path = export_model(args.checkpoint, out, format=args.format, overwrite=args.overwrite)
    print(f"exported {args.format} model to {path} (metadata in {path.with_suffix('.json')})")
    return 0
