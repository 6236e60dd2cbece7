"""Decoding any image file a FER dataset ships into one format: uint8 RGB (H, W, 3).

Datasets mix grey JPEGs (FER2013 exports, CK+), palette and RGBA PNGs, CMYK JPEGs (a few AffectNet
files) and 16-bit scans. Everything goes through :func:`decode_image`, so every adapter yields the
same record and a broken file fails in one readable way.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# A truncated file must fail loudly, not decode as a half-grey image that trains silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm", ".pbm"})


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded (truncated, corrupt, or not an image at all)."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has an image extension and is not a hidden file."""
    name = os.path.basename(str(path))
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map a high-bit-depth grey array to uint8 by scaling its value range (never by clipping)."""
    is_float = np.issubdtype(values.dtype, np.floating)
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if is_float and low >= 0.0 and high <= 1.0:
        full_scale = 1.0           # float images stored as 0..1
    elif low >= 0.0 and high <= 65535.0:
        full_scale = 65535.0       # 16-bit data, the usual case for mode I / I;16
    else:
        values = values - low      # anything else: stretch its own range
        full_scale = max(high - low, 1e-12)
    return np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def pil_to_rgb_array(image: Image.Image) -> np.ndarray:
    """Convert a loaded PIL image of any mode to a uint8 (H, W, 3) RGB array.

    Transparency is composited on black, so pixels hidden by the alpha channel never leak in.
    """
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        grey = _scale_to_uint8(np.asarray(image))
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("LA", "La", "PA", "RGBa"):
        image, mode = image.convert("RGBA"), "RGBA"
    if mode == "RGBA":
        rgba = np.asarray(image).astype(np.uint16)
        rgb = (rgba[:, :, :3] * rgba[:, :, 3:4] + 127) // 255
        return rgb.astype(np.uint8)
    if mode != "RGB":
        image = image.convert("RGB")   # L, 1, P, CMYK, YCbCr, LAB, HSV
    return np.array(image, dtype=np.uint8)   # a writable copy: torch.from_numpy warns on read-only buffers


def decode_image(source: str | os.PathLike | bytes) -> np.ndarray:
    """Decode a file path or encoded bytes to a uint8 (H, W, 3) RGB array, EXIF orientation applied.

    Raises:
        ImageDecodeError: the file is missing, truncated, or not a decodable image.
    """
    label = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(Path(source), "rb")
    except OSError as error:
        raise ImageDecodeError(label, f"cannot open: {error.strerror or error}") from None
    try:
        with handle, Image.open(handle) as image:
            image.load()   # decode now: Image.open alone reads only the header
            image = ImageOps.exif_transpose(image)
            return pil_to_rgb_array(image)
    except UnidentifiedImageError:
        raise ImageDecodeError(label, "not a recognised image format") from None
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(label, f"refused: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageDecodeError(label, f"cannot decode: {error}") from None
