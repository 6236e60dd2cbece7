"""SynthFER's parameters: the tables and ranges every image is drawn from, and the counter-based draws.

Every image is a pure function of ``(seed, split, index)``: :func:`sample_parameters` draws its
parameters from a hash of those three numbers, never from a shared random stream. Identity is a pure
function of the subject id (:func:`subject_parameters`), and the splits draw subjects from disjoint pools
(subject id modulo 3). The ranges below are the renderer's own; tools that let a user move a nuisance
(the interactive SynthFER explorer) import them from here.
"""
from __future__ import annotations

import numpy as np

from hsbs_lib.data.labels import CANONICAL_7, CANONICAL_8

EXPRESSION_CLASSES: tuple[str, ...] = CANONICAL_7
REGION_NAMES: tuple[str, ...] = ("brows", "eyes", "nose", "mouth")
POSE_BINS = 5
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
SUBJECTS_PER_SPLIT = 600

# RAF-DB basic training set, in canonical order.
RAFDB_TRAIN_COUNTS = np.array([1290, 281, 717, 4772, 1982, 705, 2524], dtype=np.float64)
RAFDB_TRAIN_DISTRIBUTION: np.ndarray = RAFDB_TRAIN_COUNTS / RAFDB_TRAIN_COUNTS.sum()
# With 8 classes, contempt gets roughly its AffectNet share and the rest keeps RAF-DB's proportions.
CONTEMPT_SHARE = 0.03

# Yaw angle per pose bin (degrees, bin 0 = face turned towards the image's left), jitter within a bin,
# and how often each bin occurs (symmetric, so a horizontal flip keeps the distribution).
POSE_YAW_DEGREES = np.array([-40.0, -20.0, 0.0, 20.0, 40.0])
POSE_YAW_JITTER = 7.0
POSE_SHARES = np.array([0.15, 0.2, 0.3, 0.2, 0.15])

# Action units, one column each, and their strength per expression at intensity 1.
ACTION_UNITS: tuple[str, ...] = (
    "inner_brow_raise", "outer_brow_raise", "brow_lower", "upper_lid_raise", "lid_tighten", "cheek_raise",
    "lip_corner_pull", "lip_corner_depress", "lip_stretch", "jaw_drop", "upper_lip_raise", "nose_wrinkle",
    "lip_press", "unilateral_corner",
)
EXPRESSION_ACTION_UNITS: dict[str, dict[str, float]] = {
    "surprise": {"inner_brow_raise": 1.0, "outer_brow_raise": 1.0, "upper_lid_raise": 1.0, "jaw_drop": 1.0},
    "fear": {"inner_brow_raise": 1.0, "outer_brow_raise": 0.5, "brow_lower": 0.5, "upper_lid_raise": 0.9,
             "lip_stretch": 1.0, "jaw_drop": 0.45, "lip_corner_depress": 0.2},
    "disgust": {"brow_lower": 0.6, "lid_tighten": 0.5, "nose_wrinkle": 1.0, "upper_lip_raise": 1.0,
                "lip_corner_depress": 0.35, "jaw_drop": 0.1},
    "happiness": {"cheek_raise": 1.0, "lip_corner_pull": 1.0, "jaw_drop": 0.35, "lid_tighten": 0.15},
    "sadness": {"inner_brow_raise": 1.0, "brow_lower": 0.35, "lid_tighten": 0.2, "lip_corner_depress": 1.0,
                "lip_press": 0.25},
    "anger": {"brow_lower": 1.0, "upper_lid_raise": 0.3, "lid_tighten": 0.6, "lip_press": 1.0,
              "upper_lip_raise": 0.15},
    "neutral": {},
    "contempt": {"unilateral_corner": 1.0, "lid_tighten": 0.15},
}
EXPRESSION_AU_TABLE = np.array(
    [[EXPRESSION_ACTION_UNITS[name].get(au, 0.0) for au in ACTION_UNITS] for name in CANONICAL_8],
    dtype=np.float32)  # (8, A)

# The regions (REGION_NAMES) whose drawing each action unit changes in the renderer (render._draw_features).
# Cheek raise lifts the lower lids (the cheeks are no region), brow lower also lowers the upper lids, and
# upper-lip raise also lifts the nose tip.
ACTION_UNIT_REGIONS: dict[str, tuple[str, ...]] = {
    "inner_brow_raise": ("brows",), "outer_brow_raise": ("brows",), "brow_lower": ("brows", "eyes"),
    "upper_lid_raise": ("eyes",), "lid_tighten": ("eyes",), "cheek_raise": ("eyes",),
    "lip_corner_pull": ("mouth",), "lip_corner_depress": ("mouth",), "lip_stretch": ("mouth",),
    "jaw_drop": ("mouth",), "upper_lip_raise": ("mouth", "nose"), "nose_wrinkle": ("nose",),
    "lip_press": ("mouth",), "unilateral_corner": ("mouth",),
}
# An expression's defining action units are those at this strength or more in EXPRESSION_ACTION_UNITS. The
# weaker ones (fear's 0.2 lip-corner depress, happiness's 0.15 lid tighten) move their region by about 0.1 at
# a typical intensity: the size of the resting face (RESTING_AU_SCALE) and the per-image twitch.
DEFINING_AU_STRENGTH = 0.5

# Difficulty knobs (calibrated so a from-scratch ResNet-18 lands at about 85% in the demo budget).
INTENSITY_RANGE = (0.28, 1.0)
INTENSITY_POWER = 0.75      # intensity = low + (high - low) * u ** power: below 1 favours strong expressions
RESTING_AU_SCALE = 0.08     # per-subject resting face: small action units present without expression
IMAGE_AU_NOISE = 0.04       # per-image twitch on every action unit
OCCLUDER_PROBABILITY = 0.2
NOISE_MAX = 0.045           # sensor noise standard deviation, images in [0, 1]

# Palettes (RGB in [0, 1]).
SKIN_TONES = np.array([[0.98, 0.86, 0.77], [0.94, 0.77, 0.64], [0.83, 0.62, 0.47], [0.67, 0.47, 0.33],
                       [0.49, 0.33, 0.23], [0.34, 0.23, 0.16]], dtype=np.float32)
HAIR_COLORS = np.array([[0.07, 0.06, 0.05], [0.22, 0.14, 0.08], [0.42, 0.27, 0.15], [0.82, 0.67, 0.38],
                        [0.55, 0.22, 0.09], [0.62, 0.62, 0.62]], dtype=np.float32)
HAIR_SHARES = np.array([0.32, 0.25, 0.17, 0.12, 0.06, 0.08])
IRIS_COLORS = np.array([[0.33, 0.2, 0.1], [0.14, 0.09, 0.06], [0.28, 0.48, 0.72], [0.33, 0.48, 0.28]],
                       dtype=np.float32)

# Hash constants (splitmix64).
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SUBJECT_DOMAIN = 0x5EB1EC7

# Background and lighting nuisances: gratings up to this amplitude, up to this many clutter shapes, a
# lighting gradient up to this strength.
GRATING_AMPLITUDE_MAX = 0.14
CLUTTER_SHAPES = 3
LIGHT_GRADIENT_MAX = 0.4


# ----------------------------------------------------------------------------------------------
# Counter-based randomness
# ----------------------------------------------------------------------------------------------

def _splitmix(z: np.ndarray) -> np.ndarray:
    z = z.copy()
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def _keys(*parts: int, indices: np.ndarray) -> np.ndarray:
    """One 64-bit key per index, mixing fixed integers (seed, split, domain) with the index."""
    with np.errstate(over="ignore"):
        base = np.zeros(1, dtype=np.uint64)
        for part in parts:
            base = _splitmix(base ^ (np.array([int(part) % (1 << 64)], dtype=np.uint64) + _GOLDEN))
        return _splitmix(base ^ (indices.astype(np.uint64) * _GOLDEN))


class _Draws:
    """Independent uniforms per key, one fresh stream per call (the call order fixes the meaning)."""

    def __init__(self, keys: np.ndarray):
        self.keys = keys
        self.stream = 0

    def uniform(self, low: float = 0.0, high: float = 1.0, size: int | None = None) -> np.ndarray:
        count = 1 if size is None else size
        streams = np.arange(self.stream, self.stream + count, dtype=np.uint64) + np.uint64(1)
        self.stream += count
        with np.errstate(over="ignore"):
            bits = _splitmix(self.keys[:, None] + streams[None, :] * _MIX2)
        unit = (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
        values = (low + (high - low) * unit).astype(np.float32)
        return values[:, 0] if size is None else values

    def choice(self, shares: np.ndarray) -> np.ndarray:
        """Categorical draw by inverse CDF: (N,) int64 in [0, len(shares))."""
        cdf = np.cumsum(shares) / np.sum(shares)
        return np.minimum(np.searchsorted(cdf, self.uniform(), side="right"), len(shares) - 1).astype(np.int64)

    def bernoulli(self, p: float) -> np.ndarray:
        return self.uniform() < p


def expression_regions(expression: str) -> tuple[str, ...]:
    """The regions (in REGION_NAMES order) that an expression's defining action units move.

    With the tables above: surprise, fear and anger move brows, eyes and mouth; disgust all four regions;
    happiness eyes and mouth; sadness brows and mouth; contempt the mouth. Neutral moves nothing: what tells
    it apart is every region at rest, so it gets all four.
    """
    if expression not in EXPRESSION_ACTION_UNITS:
        raise ValueError(f"unknown expression {expression!r}; SynthFER renders {', '.join(EXPRESSION_ACTION_UNITS)}")
    moved = {region for unit, strength in EXPRESSION_ACTION_UNITS[expression].items()
             if strength >= DEFINING_AU_STRENGTH for region in ACTION_UNIT_REGIONS[unit]}
    return tuple(region for region in REGION_NAMES if region in moved or not moved)


def class_distribution(*, balanced: bool = False, num_classes: int = 7) -> np.ndarray:
    """Class shares in canonical order: RAF-DB's training distribution by default, or uniform."""
    if num_classes not in (7, 8):
        raise ValueError(f"SynthFER renders 7 or 8 classes, got num_classes={num_classes}")
    if balanced:
        return np.full(num_classes, 1.0 / num_classes)
    if num_classes == 7:
        return RAFDB_TRAIN_DISTRIBUTION.copy()
    return np.append(RAFDB_TRAIN_DISTRIBUTION * (1 - CONTEMPT_SHARE), CONTEMPT_SHARE)


def _split_code(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"SynthFER split must be one of {sorted(SPLITS)}, got {split!r}")
    return SPLITS[split]


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------

def subject_parameters(subjects: np.ndarray) -> dict[str, np.ndarray]:
    """Identity of each subject id: face shape, feature layout, colours, hair, glasses, resting face.

    Returns a dict of (N,) float32 / int64 arrays, (N, 3) colours and (N, A) resting action units.
    """
    subjects = np.asarray(subjects, dtype=np.int64)
    draw = _Draws(_keys(_SUBJECT_DOMAIN, indices=subjects))
    p: dict[str, np.ndarray] = {}
    p["face_rx"] = draw.uniform(0.44, 0.54)
    p["face_ry"] = draw.uniform(0.6, 0.7)
    p["chin_taper"] = draw.uniform(0.05, 0.32)
    p["eye_x"] = draw.uniform(0.17, 0.225)
    p["eye_y"] = draw.uniform(-0.13, -0.07)
    p["eye_w"] = draw.uniform(0.085, 0.105)
    p["eye_h"] = draw.uniform(0.48, 0.6)           # eye height as a fraction of its width
    p["brow_gap"] = draw.uniform(0.095, 0.13)
    p["brow_arch"] = draw.uniform(0.005, 0.03)
    p["brow_thickness"] = draw.uniform(0.03, 0.045)
    p["nose_w"] = draw.uniform(0.05, 0.075)
    p["nose_y"] = draw.uniform(0.1, 0.16)
    p["mouth_w"] = draw.uniform(0.14, 0.18)
    p["mouth_gap"] = draw.uniform(0.15, 0.2)       # nose to mouth
    p["lip_upper"] = draw.uniform(0.016, 0.028)
    p["lip_lower"] = draw.uniform(0.02, 0.034)
    tone = draw.uniform(0.0, len(SKIN_TONES) - 1.0)
    p["skin"] = np.stack([np.interp(tone, np.arange(len(SKIN_TONES)), SKIN_TONES[:, c]) for c in range(3)],
                         axis=1).astype(np.float32)
    p["hair"] = HAIR_COLORS[draw.choice(HAIR_SHARES)]
    p["hair_style"] = draw.choice(np.array([0.45, 0.35, 0.2]))   # short, long, cropped
    p["hairline"] = draw.uniform(0.66, 0.82)       # fraction of face_ry above the centre
    p["hairline_curve"] = draw.uniform(0.05, 0.3)
    p["hairline_tilt"] = draw.uniform(-0.15, 0.15)
    p["iris"] = IRIS_COLORS[draw.choice(np.array([0.45, 0.3, 0.15, 0.1]))]
    p["blush"] = draw.uniform(0.0, 0.22)
    p["glasses"] = draw.bernoulli(0.22)
    p["glasses_color"] = draw.uniform(0.05, 0.45, size=3)
    p["clothes"] = draw.uniform(0.1, 0.9, size=3)
    # A resting face: a little of some action units without any emotion (drooping corners, raised brows).
    resting = draw.uniform(0.0, 1.0, size=len(ACTION_UNITS)) ** 2 * RESTING_AU_SCALE
    p["resting_au"] = resting.astype(np.float32)
    return p


def sample_parameters(indices, *, seed: int = 0, split: str = "train", balanced: bool = False,
                      num_classes: int = 7) -> dict[str, np.ndarray]:
    """Everything that defines images ``indices`` of (seed, split): labels, pose, jitter, nuisances.

    Returns a dict of arrays with leading dimension N (see :func:`render_parameters`). Edit entries
    (``label``, ``intensity``, ``yaw``, ``occluder``...) to render controlled variations.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size and indices.min() < 0:
        raise ValueError("SynthFER indices must be non-negative")
    code = _split_code(split)
    draw = _Draws(_keys(int(seed), code, indices=indices))
    n = len(indices)
    p: dict[str, np.ndarray] = {"index": indices}
    p["label"] = draw.choice(class_distribution(balanced=balanced, num_classes=num_classes))
    low, high = INTENSITY_RANGE
    intensity = low + (high - low) * draw.uniform() ** INTENSITY_POWER
    p["intensity"] = np.clip(intensity, 1e-3, 1.0).astype(np.float32)
    p["subject"] = code + len(SPLITS) * np.floor(draw.uniform() * SUBJECTS_PER_SPLIT).astype(np.int64)
    p["pose"] = draw.choice(POSE_SHARES)
    p["yaw"] = np.radians(POSE_YAW_DEGREES[p["pose"]] + draw.uniform(-POSE_YAW_JITTER, POSE_YAW_JITTER)
                          ).astype(np.float32)
    p["roll"] = np.radians(draw.uniform(-12.0, 12.0)).astype(np.float32)
    p["scale"] = draw.uniform(1.02, 1.2)
    p["shift"] = draw.uniform(-0.08, 0.08, size=2)
    p["gaze"] = draw.uniform(-1.0, 1.0, size=2)
    p["au_noise"] = draw.uniform(-1.0, 1.0, size=len(ACTION_UNITS)) * IMAGE_AU_NOISE
    # background: base colour, two coloured gratings, clutter shapes
    p["background"] = draw.uniform(0.1, 0.9, size=3)
    p["grating_amp"] = draw.uniform(0.0, GRATING_AMPLITUDE_MAX, size=2)
    p["grating_freq"] = draw.uniform(3.0, 18.0, size=2)
    p["grating_angle"] = draw.uniform(0.0, np.pi, size=2)
    p["grating_phase"] = draw.uniform(0.0, 2 * np.pi, size=2)
    p["grating_color"] = draw.uniform(-1.0, 1.0, size=6).reshape(n, 2, 3)
    # per clutter shape: present, kind, x, y, rx, ry, rgb
    p["clutter"] = draw.uniform(0.0, 1.0, size=CLUTTER_SHAPES * 9).reshape(n, CLUTTER_SHAPES, 9)
    # photometric nuisances
    p["light_gradient"] = draw.uniform(0.0, LIGHT_GRADIENT_MAX)
    p["light_angle"] = draw.uniform(0.0, 2 * np.pi)
    p["brightness"] = draw.uniform(0.8, 1.12)
    p["white_balance"] = draw.uniform(0.92, 1.08, size=3)
    p["noise_std"] = draw.uniform(0.0, NOISE_MAX)
    p["noise_offset"] = draw.uniform(0.0, 1.0, size=2)
    p["blur"] = np.where(draw.bernoulli(0.5), draw.uniform(0.0, 1.0), 0.0).astype(np.float32)
    # occluder: present, kind (ellipse / bar), centre relative to the face, radii, angle, colour
    p["occluder"] = draw.bernoulli(OCCLUDER_PROBABILITY)
    p["occluder_shape"] = draw.uniform(0.0, 1.0, size=9)
    p["occluder_skin"] = draw.bernoulli(0.3)    # a hand-coloured occluder
    p["cloth_jitter"] = draw.uniform(-0.1, 0.1, size=3)
    return p
