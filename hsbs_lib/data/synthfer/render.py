"""SynthFER's renderer: parameters in, faces and region masks out.

Expressions are drawn as action-unit-like deformations (brow raise / lower / inner raise, eye opening,
lid tightening, lip-corner pull / depress, lip stretch, mouth opening, upper-lip raise, nose wrinkle,
lip press) scaled by an intensity in (0, 1]. At low intensity every class fades into the subject's
resting face, and the classes that share action units (fear / surprise, anger / disgust,
sadness / neutral) stay confusable.

Rendering is vectorised over the batch: every shape is a soft signed-distance test evaluated on
(N, S, S) coordinate grids with numpy broadcasting.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

from hsbs_lib.data.synthfer.params import (ACTION_UNITS, CLUTTER_SHAPES, EXPRESSION_AU_TABLE, REGION_NAMES,
                                           sample_parameters, subject_parameters)

_PIXELS_PER_CHUNK = 1 << 16   # 16 images at 64 px: temporaries stay cache-sized, call overhead amortised


def _action_units(p: dict, subject: dict) -> np.ndarray:
    """(N, A) action unit strengths: expression x intensity + resting face + per-image twitch."""
    expression = EXPRESSION_AU_TABLE[p["label"]] * p["intensity"][:, None]
    return np.clip(expression + subject["resting_au"] + p["au_noise"], 0.0, 1.3).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Drawing helpers (all on (N, S, S) float32 grids; per-image scalars broadcast as (N, 1, 1))
# ----------------------------------------------------------------------------------------------

def _b(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(-1, 1, 1)


def _ellipse_sd(u, v, cx, cy, rx, ry):
    """Approximate signed distance to an axis-aligned ellipse (negative inside), in face units."""
    du = (u - cx) / rx
    dv = (v - cy) / ry
    return (np.sqrt(du * du + dv * dv) - 1.0) * np.minimum(rx, ry)


def _rounded_box_sd(du, dv, half_w, half_h, radius):
    """Signed distance to a box with rounded corners centred at the origin of (du, dv)."""
    qx = np.abs(du) - (half_w - radius)
    qy = np.abs(dv) - (half_h - radius)
    outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0.0) - radius


class _Canvas:
    """Float RGB images, channels first (N, 3, H, W) so numpy's inner loops run along image rows, plus
    the per-image pixel density (N, 1, 1) in pixels per unit of the coordinates shapes are drawn in."""

    def __init__(self, rgb: np.ndarray, inv_pixel: np.ndarray):
        self.rgb = rgb
        self.inv_pixel = inv_pixel
        self._scratch = np.empty_like(rgb)   # reused by every paint: no large temporaries per shape

    def coverage(self, sd, softness: float = 1.0):
        """Anti-aliased coverage of a shape from its signed distance (a one pixel wide edge)."""
        return np.clip(0.5 - sd * (self.inv_pixel * (1.0 / softness)), 0.0, 1.0)

    def paint(self, alpha, color):
        """Alpha-blend ``color`` ((3,), (N, 3) or (N, 3, H, W)) with ``alpha`` (N, H, W)."""
        color = np.asarray(color, dtype=np.float32)
        if color.ndim == 1:
            color = color[None, :, None, None]
        elif color.ndim == 2:
            color = color[:, :, None, None]
        blend = np.subtract(color, self.rgb, out=self._scratch)
        blend *= alpha[:, None]
        self.rgb += blend

    def darken(self, amount):
        """Multiply by (1 - amount), amount (N, H, W): shading, wrinkles, nostrils in one pass."""
        self.rgb *= (1.0 - np.clip(amount, 0.0, 0.9))[:, None]


def _stripes(coordinate, period, width=0.35):
    """Soft periodic lines (wrinkles, hair strands) along one coordinate: values in [0, 1]."""
    return np.clip((np.cos(coordinate * (2 * np.pi / period)) - (1 - 2 * width)) * 2.5, 0.0, 1.0)


@functools.lru_cache(maxsize=8)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed (2S, 2S, 3) Gaussian field; each image reads an S x S window at its own offset."""
    return np.random.default_rng(20240607).standard_normal((2 * size, 2 * size, 3)).astype(np.float32)


def _gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of (N, C, H, W) float32 images in one OpenCV call (channels stacked)."""
    n, c, h, w = images.shape
    stacked = np.ascontiguousarray(images.reshape(n * c, h, w).transpose(1, 2, 0))
    blurred = cv2.GaussianBlur(stacked, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    return blurred.reshape(h, w, n * c).transpose(2, 0, 1).reshape(n, c, h, w)


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

# Where the facial features can be, in face coordinates: |u| <= 0.44 and -0.54 <= v <= 0.66.
_FEATURE_HALF_U, _FEATURE_CENTER_V, _FEATURE_HALF_V = 0.44, 0.06, 0.6


def render_parameters(p: dict[str, np.ndarray], *, size: int = 64) -> dict[str, np.ndarray]:
    """Draw the faces described by ``p`` (from :func:`sample_parameters`).

    Returns "images" uint8 (N, S, S, 3), "masks" bool (N, 4, S, S) in REGION_NAMES order, and "face"
    bool (N, S, S), the face oval before occluders.
    """
    n = len(p["label"])
    chunk = max(1, _PIXELS_PER_CHUNK // (size * size))
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.empty((n, len(REGION_NAMES), size, size), dtype=bool)
    face = np.empty((n, size, size), dtype=bool)
    subject = subject_parameters(p["subject"])
    action_units = _action_units(p, subject)
    for start in range(0, n, chunk):
        part = {key: value[start:start + chunk] for key, value in p.items()}
        part_subject = {key: value[start:start + chunk] for key, value in subject.items()}
        images[start:start + chunk], masks[start:start + chunk], face[start:start + chunk] = \
            _render_chunk(part, part_subject, action_units[start:start + chunk], size)
    return {"images": images, "masks": masks, "face": face}


class _FaceFrame:
    """Similarity transform from image coordinates ([-1, 1], y down) to face coordinates, plus yaw."""

    def __init__(self, p: dict, s: dict):
        self.scale = _b(p["scale"])
        self.cx, self.cy = _b(p["shift"][:, 0]), _b(p["shift"][:, 1] + 0.06)
        self.cos, self.sin = _b(np.cos(p["roll"])), _b(np.sin(p["roll"]))
        self.yaw = _b(p["yaw"])
        self.radius = 1.1 * _b(s["face_rx"])

    def face_coordinates(self, gx, gy):
        """(u, v): face coordinates of image points, (N, H, W) each."""
        dx, dy = gx - self.cx, gy - self.cy
        inv = 1.0 / self.scale
        return (self.cos * dx + self.sin * dy) * inv, (self.cos * dy - self.sin * dx) * inv

    def frontal(self, u):
        """Yaw: the face is a cylinder; u0 is the frontal coordinate seen at image coordinate u."""
        theta = np.arcsin(np.clip(u / self.radius, -1.0, 1.0)) - self.yaw
        return self.radius * np.sin(np.clip(theta, -np.pi / 2, np.pi / 2))


def _feature_window(p: dict, size: int):
    """Per-image pixel origins (N,) and one window size (wx, wy) that covers every facial feature."""
    scale = p["scale"].astype(np.float64)
    cos, sin = np.abs(np.cos(p["roll"])), np.abs(np.sin(p["roll"]))
    center_x = p["shift"][:, 0] - scale * np.sin(p["roll"]) * _FEATURE_CENTER_V
    center_y = p["shift"][:, 1] + 0.06 + scale * np.cos(p["roll"]) * _FEATURE_CENTER_V
    half_x = scale * (_FEATURE_HALF_U * cos + _FEATURE_HALF_V * sin) * size / 2 + 1.5
    half_y = scale * (_FEATURE_HALF_U * sin + _FEATURE_HALF_V * cos) * size / 2 + 1.5
    wx = int(min(size, np.ceil(2 * half_x.max())))
    wy = int(min(size, np.ceil(2 * half_y.max())))
    ox = np.clip(np.floor((center_x + 1) * size / 2 - wx / 2), 0, size - wx).astype(np.int64)
    oy = np.clip(np.floor((center_y + 1) * size / 2 - wy / 2), 0, size - wy).astype(np.int64)
    return ox, oy, wx, wy


def _render_chunk(p: dict, s: dict, action_units: np.ndarray, size: int, *, full_window: bool = False):
    """Render one chunk: image parameters ``p``, subject parameters ``s``, action units (N, A)."""
    n = len(p["label"])
    A = {name: _b(column) for name, column in zip(ACTION_UNITS, action_units.T)}
    frame = _FaceFrame(p, s)
    inv_pixel = frame.scale * (size / 2.0)
    axis = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    gx, gy = axis[None, None, :], axis[None, :, None]

    # Whole image: background, body, hair, face oval.
    canvas = _Canvas(_background(p, s, frame, size), inv_pixel)
    u, v = frame.face_coordinates(gx, gy)
    face_sd = _draw_head(canvas, p, s, u, v)

    # Facial features, drawn inside a window around them (about half the pixels at the default jitter).
    if full_window:
        ox, oy, wx, wy = np.zeros(n, np.int64), np.zeros(n, np.int64), size, size
    else:
        ox, oy, wx, wy = _feature_window(p, size)
    wgx = ((ox[:, None] + np.arange(wx)) * (2.0 / size) + (1.0 / size - 1.0)).astype(np.float32)[:, None, :]
    wgy = ((oy[:, None] + np.arange(wy)) * (2.0 / size) + (1.0 / size - 1.0)).astype(np.float32)[:, :, None]
    window = _Canvas(np.empty((n, 3, wy, wx), np.float32), inv_pixel)
    face_window = np.empty((n, wy, wx), bool)
    for i in range(n):
        rows, cols = slice(oy[i], oy[i] + wy), slice(ox[i], ox[i] + wx)
        window.rgb[i] = canvas.rgb[i, :, rows, cols]
        face_window[i] = face_sd[i, rows, cols] < 0
    wu, wv = frame.face_coordinates(wgx, wgy)
    region_window = _draw_features(window, p, s, A, wu, wv, frame.frontal(wu))
    region_window &= face_window[:, None]
    masks = np.zeros((n, len(REGION_NAMES), size, size), dtype=bool)
    for i in range(n):
        rows, cols = slice(oy[i], oy[i] + wy), slice(ox[i], ox[i] + wx)
        canvas.rgb[i, :, rows, cols] = window.rgb[i]
        masks[i, :, rows, cols] = region_window[i]

    # Occluders over everything (the face included), then lighting, blur and sensor noise.
    _draw_occluders(canvas, p, gx, gy, s["skin"], size)
    return _photometric(canvas.rgb, p, gx, gy, size), masks, face_sd < 0


def _draw_body(canvas: _Canvas, p: dict, s: dict, u, v):
    """Clothes, neck and ears: behind the hair and the face, so drawn with the background."""
    skin = s["skin"]
    rx, ry = _b(s["face_rx"]), _b(s["face_ry"])
    clothes = np.clip(s["clothes"] + p["cloth_jitter"], 0.0, 1.0)
    canvas.paint(canvas.coverage(_ellipse_sd(u, v, 0.0, ry + 0.62, rx * 2.3, 0.45)), clothes)
    canvas.paint(canvas.coverage(np.maximum(np.abs(u) - rx * 0.45, 0.2 - v)), skin * 0.82)
    canvas.paint(canvas.coverage(_ellipse_sd(np.abs(u), v, rx * 0.97, 0.0, 0.065, 0.1)), skin * 0.9)


def _draw_head(canvas: _Canvas, p: dict, s: dict, u, v):
    """Hair, the face oval and the hair fringe. Returns the face's signed distance (N, H, W)."""
    skin, hair = s["skin"], s["hair"]
    rx, ry = _b(s["face_rx"]), _b(s["face_ry"])

    style = s["hair_style"]                              # 0 short, 1 long, 2 cropped
    hair_cx = -0.12 * _b(np.sin(p["yaw"]))               # the back of the head shows on the far side
    grow = _b(np.select([style == 0, style == 1], [1.1, 1.14], 1.04))
    hair_sd = _ellipse_sd(u, v, hair_cx, -0.07, rx * grow + 0.01, ry * grow)
    long_hair = _rounded_box_sd(u - hair_cx, v - 0.2, rx * 1.18, ry * 0.62 + 0.25, 0.16)
    hair_sd = np.minimum(hair_sd, long_hair + _b(np.where(style == 1, 0.0, 10.0)))
    strands = (0.95 + 0.1 * _stripes(u - 0.3 * v, 0.045))[:, None]
    hair_texture = hair[:, :, None, None] * strands
    hair_alpha = canvas.coverage(hair_sd)
    canvas.paint(hair_alpha, hair_texture)

    # The face narrows towards the chin; soft shading towards the rim gives it volume.
    taper = _b(s["chin_taper"])
    rx_face = rx * (1.0 - taper * np.clip(v / ry, 0.0, 1.0) ** 2)
    q = np.sqrt((u / rx_face) ** 2 + (v / ry) ** 2)
    face_sd = (q - 1.0) * np.minimum(rx, ry)
    q3 = np.minimum(q, 1.0)
    q3 = q3 * q3 * q3
    canvas.paint(canvas.coverage(face_sd), skin[:, :, None, None] * (1.0 - 0.16 * q3)[:, None])

    hairline = -_b(s["hairline"]) * ry + _b(s["hairline_curve"]) * (u / rx) ** 2 + _b(s["hairline_tilt"]) * u
    fringe = hair_alpha * canvas.coverage(v - hairline) * _b(np.where(style == 2, 0.85, 1.0))
    canvas.paint(fringe, hair_texture)
    return face_sd


def _draw_features(canvas: _Canvas, p: dict, s: dict, A: dict, u, v, u0) -> np.ndarray:
    """Cheeks, eyes, brows, nose, mouth, wrinkles and glasses in face coordinates (u, v), with u0 the
    yaw-corrected frontal coordinate. Returns the region masks (N, 4, H, W)."""
    skin, hair = s["skin"], s["hair"]
    side = np.sign(u0)
    au0 = np.abs(u0)                                     # mirrored: one evaluation draws both eyes / brows
    eye_x, eye_y, eye_w = _b(s["eye_x"]), _b(s["eye_y"]), _b(s["eye_w"])
    nose_w, nose_y = _b(s["nose_w"]), _b(s["nose_y"])
    brow_y = eye_y - _b(s["brow_gap"])
    un = u0 - 0.12 * _b(np.sin(p["yaw"]))                # the nose sticks out, so it moves further with yaw
    nose_top = eye_y + 0.03
    mouth_y = nose_y + _b(s["mouth_gap"])

    # Cheeks, lifted and reddened by cheek_raise.
    cheek_r = 0.08 * (1.0 + 0.25 * A["cheek_raise"])
    cheek_d = ((au0 - eye_x - 0.03) ** 2 + (v - (eye_y + 0.17 - 0.05 * A["cheek_raise"])) ** 2) / cheek_r ** 2
    blush = (_b(s["blush"]) + 0.25 * A["cheek_raise"]) * np.clip(1.0 - cheek_d, 0.0, 1.0) ** 2
    canvas.paint(blush, np.array([0.86, 0.42, 0.42], dtype=np.float32))

    # Mouth geometry first: the nasolabial folds follow the mouth corners.
    jaw = A["jaw_drop"]
    narrow = jaw * np.clip(1.0 - A["lip_stretch"] - A["lip_corner_pull"], 0.0, 1.0)
    mouth_w = _b(s["mouth_w"]) * (1.0 + 0.32 * A["lip_stretch"] + 0.18 * A["lip_corner_pull"]
                                  - 0.3 * narrow - 0.18 * A["lip_press"])
    tm = u0 / mouth_w
    corner_lift = 0.095 * A["lip_corner_pull"] - 0.09 * A["lip_corner_depress"] \
        + (u0 > 0) * (0.06 * A["unilateral_corner"])
    tt = np.minimum(tm * tm, 1.0)
    center = mouth_y + 0.03 * jaw - corner_lift * tt
    profile = np.sqrt(1.0 - tt)
    lip_profile = np.sqrt(profile)
    open_up = 0.025 * jaw + 0.05 * A["upper_lip_raise"] + 0.012 * A["lip_corner_pull"]
    open_lo = 0.13 * jaw + 0.015 * A["upper_lip_raise"] + 0.01 * A["lip_corner_pull"]
    press = 1.0 - 0.75 * A["lip_press"]
    in_up = open_up * profile + 0.005
    in_lo = open_lo * profile + 0.005
    dv = v - center
    ends = (np.abs(tm) - 1.0) * mouth_w
    lips_sd = np.maximum(np.maximum(-dv - (in_up + _b(s["lip_upper"]) * press * lip_profile),
                                    dv - (in_lo + _b(s["lip_lower"]) * press * lip_profile)), ends)
    inner_sd = np.maximum(np.maximum(-dv - in_up, dv - in_lo), ends)

    # Shading in one pass: nose sides, tip and nostrils, nose-bridge wrinkles (nose_wrinkle),
    # forehead wrinkles (brow raise), nasolabial folds (smile, upper-lip raise).
    frac = np.clip((v - nose_top) / (nose_y - nose_top), 0.0, 1.0)
    side_sd = np.maximum(np.abs(np.abs(un) - nose_w * (0.3 + 0.4 * frac)) - 0.006,
                         np.maximum(nose_top - v, v - (nose_y - 0.035)))
    shade = canvas.coverage(side_sd, softness=2.0) * 0.2
    lift = 0.03 * A["nose_wrinkle"] + 0.01 * A["upper_lip_raise"]
    tip_y = nose_y - 0.025 - lift
    tip_sd = np.maximum(np.abs(_ellipse_sd(un, v, 0.0, tip_y, nose_w * 0.95, 0.035)) - 0.005, tip_y - v)
    shade += canvas.coverage(tip_sd, softness=1.5) * 0.3
    flare = 1.0 + 0.45 * A["nose_wrinkle"]
    nostril_sd = _ellipse_sd(np.abs(un), v, nose_w * 0.5 * flare, nose_y - 0.008 - lift, 0.018 * flare, 0.01)
    shade += canvas.coverage(nostril_sd) * 0.6
    bridge = np.clip((0.045 - np.abs(un)) * 60, 0, 1) * np.clip((v - (eye_y - 0.02)) * 60, 0, 1) \
        * np.clip(((eye_y + 0.06) - v) * 60, 0, 1)
    shade += (0.5 * np.clip(A["nose_wrinkle"] * 1.2, 0, 1)) * bridge * _stripes(v, 0.025, 0.25)
    raise_amount = np.clip(A["inner_brow_raise"] + A["outer_brow_raise"] - 0.4, 0.0, 1.0)
    forehead = np.clip((v - (brow_y - 0.2)) * 40, 0, 1) * np.clip(((brow_y - 0.07) - v) * 40, 0, 1) \
        * np.clip((0.2 - au0) * 30, 0, 1)
    hairline = -_b(s["hairline"]) * _b(s["face_ry"]) + 0.02
    shade += (0.3 * raise_amount) * forehead * _stripes(v, 0.04, 0.2) * np.clip((v - hairline) * 40, 0, 1)
    fold_top, fold_bottom = nose_y - 0.01, mouth_y + 0.02
    fold_t = np.clip((v - fold_top) / (fold_bottom - fold_top), 0.0, 1.0)
    fold_x = nose_w + 0.03 + (mouth_w + 0.005 - nose_w) * fold_t + 0.02 * np.sin(np.pi * fold_t)
    fold_sd = np.maximum(np.abs(au0 - fold_x) - 0.005, np.maximum(fold_top - v, v - fold_bottom))
    fold_strength = np.clip(A["lip_corner_pull"] + 0.7 * A["upper_lip_raise"] + 0.3 * A["nose_wrinkle"], 0, 1)
    shade += canvas.coverage(fold_sd, softness=1.5) * (0.22 * fold_strength)
    canvas.darken(shade)

    # Eyes: dark outline (lashes), sclera, iris, pupil; lids follow upper_lid_raise / lid_tighten / cheek_raise.
    openness_up = 1.0 + 0.7 * A["upper_lid_raise"] - 0.55 * A["lid_tighten"] - 0.2 * A["brow_lower"]
    openness_lo = 1.0 - 0.55 * A["cheek_raise"] - 0.35 * A["lid_tighten"] + 0.25 * A["upper_lid_raise"]
    eye_h = eye_w * _b(s["eye_h"])
    lu, lv = au0 - eye_x, v - eye_y
    eh_up = eye_h * np.maximum(openness_up, 0.12)
    eh_lo = eye_h * 0.8 * np.maximum(openness_lo, 0.15)
    eh = eh_lo + (lv < 0) * (eh_up - eh_lo)
    eye_sd = _ellipse_sd(lu, lv, 0.0, 0.0, eye_w, eh)
    outline_sd = _ellipse_sd(lu, lv, 0.0, -0.004, eye_w + 0.012, eh + 0.014)
    canvas.paint(canvas.coverage(outline_sd), np.minimum(hair, skin * 0.3) * 0.7)
    sclera = canvas.coverage(eye_sd)
    canvas.paint(sclera, np.array([0.96, 0.95, 0.92], dtype=np.float32))
    iris_u = lu - side * (_b(p["gaze"][:, 0]) * eye_w * 0.3)
    iris_v = lv - _b(p["gaze"][:, 1]) * eye_h * 0.15
    iris_r = eye_w * 0.48
    iris_d = np.sqrt(iris_u * iris_u + iris_v * iris_v)
    canvas.paint(canvas.coverage(iris_d - iris_r) * sclera, s["iris"])
    canvas.paint(canvas.coverage(iris_d - iris_r * 0.45) * sclera, np.array([0.03, 0.03, 0.03], np.float32))

    # Brows: a tapered band; the inner end rises with inner_brow_raise and drops with brow_lower.
    brow_w = eye_w * 1.3
    brow_x = eye_x + 0.005 - 0.03 * A["brow_lower"]
    t = (au0 - brow_x) / brow_w                          # -1 inner end, +1 outer end
    inner_shift = -0.12 * A["inner_brow_raise"] + 0.1 * A["brow_lower"]
    outer_shift = -0.1 * A["outer_brow_raise"] + 0.025 * A["brow_lower"]
    arch = _b(s["brow_arch"]) + 0.025 * A["outer_brow_raise"]
    brow_center = brow_y - arch * (1.0 - t * t) + (inner_shift * 0.5) * (1 - t) + (outer_shift * 0.5) * (1 + t)
    half_thickness = _b(s["brow_thickness"]) * 0.5 * (1.0 - 0.4 * np.clip(t, 0, 1))
    brow_sd = np.maximum(np.abs(v - brow_center) - half_thickness, (np.abs(t) - 1.0) * brow_w)
    canvas.paint(canvas.coverage(brow_sd) * 0.95, np.minimum(hair * 0.75, skin * 0.45))

    # Mouth: lips, the opening, teeth shown by a smile, a raised upper lip or a stretch.
    lip_color = np.clip(skin * np.array([0.86, 0.56, 0.56], np.float32) + np.array([0.08, 0.0, 0.0],
                                                                                     np.float32), 0, 1)
    canvas.paint(canvas.coverage(lips_sd), lip_color)
    canvas.paint(canvas.coverage(inner_sd), np.array([0.22, 0.06, 0.07], np.float32))
    teeth_show = np.clip(2.0 * (A["lip_corner_pull"] + A["upper_lip_raise"]) + 0.6 * A["lip_stretch"] - 0.25,
                         0.0, 1.0)
    teeth_sd = np.maximum(inner_sd, dv + in_up - 0.028)
    canvas.paint(canvas.coverage(teeth_sd) * teeth_show, np.array([0.95, 0.94, 0.88], np.float32))

    # Glasses (a subject attribute): tinted lenses, two rims and a bridge.
    wearers = np.flatnonzero(s["glasses"])
    if wearers.size:
        sub = _Canvas(canvas.rgb[wearers], canvas.inv_pixel[wearers])
        g_lu, g_lv, g_au0, g_v = lu[wearers], lv[wearers], au0[wearers], v[wearers]
        g_eye_x, g_eye_y, g_eye_w = eye_x[wearers], eye_y[wearers], eye_w[wearers]
        rim = _ellipse_sd(g_lu, g_lv, 0.0, 0.005, g_eye_w * 1.6, g_eye_w * 1.15)
        sub.paint(sub.coverage(rim) * 0.12, np.array([0.7, 0.8, 0.9], np.float32))
        bridge_sd = np.maximum(np.abs(g_v - (g_eye_y - 0.015)) - 0.007, g_au0 - (g_eye_x - g_eye_w * 1.5))
        sub.paint(sub.coverage(np.minimum(np.abs(rim) - 0.008, bridge_sd)), s["glasses_color"][wearers])
        canvas.rgb[wearers] = sub.rgb

    # Region masks: the geometry of the features above, with a small margin.
    margin = 0.025
    return np.stack([
        brow_sd < margin,
        _ellipse_sd(lu, lv, 0.0, 0.0, eye_w + 0.02, eh + 0.02) < margin,
        _ellipse_sd(un, v, 0.0, (nose_top + nose_y) * 0.5, nose_w * 1.25, (nose_y - nose_top) * 0.5 + 0.005)
        < margin,
        lips_sd < margin,
    ], axis=1)


def _background(p: dict, s: dict, frame: "_FaceFrame", size: int) -> np.ndarray:
    """Base colour, two coloured gratings, up to three clutter shapes, then clothes, neck and ears:
    (N, 3, S, S) float32.

    Drawn at half resolution and upsampled, like a portrait's out-of-focus background: a quarter of
    the cost. Hair and face are drawn over it at full resolution.
    """
    n = len(p["label"])
    low = max(8, size // 2)
    axis = (np.arange(low, dtype=np.float32) + 0.5) * (2.0 / low) - 1.0
    gx, gy = axis[None, None, :], axis[None, :, None]
    rgb = np.empty((n, 3, low, low), np.float32)
    rgb[:] = p["background"][:, :, None, None]
    for k in range(2):
        # sin(a x + b y + c) = sin(a x) cos(b y + c) + cos(a x) sin(b y + c): two outer products.
        frequency = p["grating_freq"][:, k] * np.pi
        angle = p["grating_angle"][:, k]
        ax = (frequency * np.cos(angle))[:, None] * axis
        by = (frequency * np.sin(angle))[:, None] * axis + p["grating_phase"][:, k, None]
        wave = np.sin(ax)[:, None, :] * np.cos(by)[:, :, None] + np.cos(ax)[:, None, :] * np.sin(by)[:, :, None]
        wave *= _b(p["grating_amp"][:, k])
        rgb += wave[:, None] * p["grating_color"][:, k][:, :, None, None]
    canvas = _Canvas(rgb, _b(np.full(n, low / 4.0)))    # two-pixel soft edges
    for k in range(CLUTTER_SHAPES):
        c = p["clutter"][:, k]
        cx, cy = _b(c[:, 2] * 2 - 1), _b(c[:, 3] * 2 - 1)
        rx, ry = _b(0.08 + 0.3 * c[:, 4]), _b(0.08 + 0.3 * c[:, 5])
        if k == 1:   # one box-shaped, two round
            sd = np.maximum(np.abs(gx - cx) - rx, np.abs(gy - cy) - ry)
        else:
            sd = _ellipse_sd(gx, gy, cx, cy, rx, ry)
        canvas.paint(canvas.coverage(sd) * _b(c[:, 0] < 0.75), c[:, 6:9])
    body = _Canvas(canvas.rgb, frame.scale * (low / 2.0))
    _draw_body(body, p, s, *frame.face_coordinates(gx, gy))
    return _resize_channels(body.rgb, size)


def _resize_channels(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (N, C, h, w) to (N, C, size, size) in one OpenCV call (channels stacked)."""
    n, c, h, w = images.shape
    stacked = images.reshape(n * c, h, w).transpose(1, 2, 0)
    resized = cv2.resize(stacked, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(resized.reshape(size, size, n * c).transpose(2, 0, 1)).reshape(n, c, size, size)


def _draw_occluders(canvas: _Canvas, p: dict, gx, gy, skin: np.ndarray, size: int) -> None:
    """One random ellipse or bar, often over the face (hands, microphones, scarves)."""
    hit = np.flatnonzero(p["occluder"])
    if hit.size == 0:
        return
    o = p["occluder_shape"][hit]
    cx = _b(o[:, 0] * 1.1 - 0.55 + p["shift"][hit, 0])
    cy = _b(o[:, 1] * 1.1 - 0.5 + p["shift"][hit, 1])
    rx, ry = _b(0.08 + 0.18 * o[:, 2]), _b(0.05 + 0.15 * o[:, 3])
    cos_a, sin_a = _b(np.cos(o[:, 4] * np.pi)), _b(np.sin(o[:, 4] * np.pi))
    a = cos_a * (gx - cx) + sin_a * (gy - cy)
    b = cos_a * (gy - cy) - sin_a * (gx - cx)
    round_shape = _b(o[:, 5] < 0.5)
    sd = round_shape * _ellipse_sd(a, b, 0.0, 0.0, rx, ry) \
        + (1.0 - round_shape) * np.maximum(np.abs(a) - rx, np.abs(b) - ry)
    color = np.where(p["occluder_skin"][hit, None], skin[hit] * (0.85 + 0.2 * o[:, 6:7]), o[:, 6:9])
    sub = _Canvas(canvas.rgb[hit], _b(np.full(hit.size, size / 2.0)))   # image units: 2 / S per pixel
    sub.paint(sub.coverage(sd), color)
    canvas.rgb[hit] = sub.rgb


def _photometric(rgb: np.ndarray, p: dict, gx, gy, size: int) -> np.ndarray:
    """Lighting gradient, brightness, white balance, blur and sensor noise; (N, 3, S, S) -> uint8 (N, S, S, 3)."""
    angle = p["light_angle"]
    gradient = _b(p["light_gradient"]) * (_b(np.cos(angle)) * gx + _b(np.sin(angle)) * gy)
    rgb *= ((1.0 + gradient) * _b(p["brightness"]))[:, None]
    rgb *= p["white_balance"][:, :, None, None]
    blurry = np.flatnonzero(p["blur"] > 0)
    if blurry.size:
        sharp = rgb[blurry]
        blurred = _gaussian_blur(sharp, 0.9 * size / 64)
        rgb[blurry] = sharp + _b(p["blur"][blurry])[:, None] * (blurred - sharp)
    img = rgb.transpose(0, 2, 3, 1)
    bank = _noise_bank(size)
    offset = np.floor(p["noise_offset"] * size).astype(np.int64)
    for i, (row, col) in enumerate(offset):
        img[i] += bank[row:row + size, col:col + size] * p["noise_std"][i]
    img *= 255.0
    img += 0.5
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------

MIN_SIZE = 16   # the smallest image side the renderer draws


def check_size(size: int) -> None:
    """Refuse an image side SynthFER cannot draw (ValueError)."""
    if size < MIN_SIZE:
        raise ValueError(f"SynthFER size must be at least {MIN_SIZE} pixels, got {size}")


def render_synthfer(indices, *, size: int = 64, seed: int = 0, split: str = "train", balanced: bool = False,
                    num_classes: int = 7) -> dict[str, np.ndarray]:
    """Render SynthFER images ``indices`` of (seed, split).

    Returns numpy arrays: "images" uint8 (N, S, S, 3); "masks" bool (N, 4, S, S) for REGION_NAMES;
    "labels" int64 (canonical order); "poses" int64 yaw bins 0..4 (2 frontal); "subjects" int64;
    "intensity" float32 in (0, 1]; "occluded" bool (N,); "face" bool (N, S, S), the face oval.
    Each image depends only on (seed, split, index), not on the rest of the batch.
    """
    check_size(size)
    p = sample_parameters(indices, seed=seed, split=split, balanced=balanced, num_classes=num_classes)
    out = render_parameters(p, size=size)
    out.update(labels=p["label"], poses=p["pose"], subjects=p["subject"], intensity=p["intensity"],
               occluded=p["occluder"].astype(bool))
    return out
