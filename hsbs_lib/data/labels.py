"""The canonical label order and the synonyms every adapter maps through.

All datasets are reported in the RAF-DB order (7 classes), with contempt appended as class 7 when a
dataset has 8 classes. Adapters translate *by name*, never by the alphabetical order of folders.
"""
from __future__ import annotations

CANONICAL_7: tuple[str, ...] = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
CANONICAL_8: tuple[str, ...] = CANONICAL_7 + ("contempt",)

# Lower-case spelling found in the wild -> canonical name.
SYNONYMS: dict[str, str] = {
    "surprise": "surprise", "surprised": "surprise", "surprize": "surprise", "su": "surprise",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear", "fe": "fear",
    "disgust": "disgust", "disgusted": "disgust", "di": "disgust",
    "happiness": "happiness", "happy": "happiness", "joy": "happiness", "ha": "happiness",
    "sadness": "sadness", "sad": "sadness", "sa": "sadness",
    "anger": "anger", "angry": "anger", "an": "anger",
    "neutral": "neutral", "neutrality": "neutral", "calm": "neutral", "ne": "neutral",
    "contempt": "contempt", "contemptuous": "contempt", "co": "contempt",
}


def class_names(num_classes: int = 7) -> tuple[str, ...]:
    """Canonical label names for 7 or 8 classes."""
    if num_classes == 7:
        return CANONICAL_7
    if num_classes == 8:
        return CANONICAL_8
    raise ValueError(f"num_classes must be 7 or 8 (canonical FER label sets), got {num_classes}")


def canonical_name(name: str) -> str | None:
    """Map a class name in any common spelling to its canonical name, or None if unknown.

    >>> canonical_name("Angry"), canonical_name("happy"), canonical_name("xyz")
    ('anger', 'happiness', None)
    """
    key = name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")
    return SYNONYMS.get(key)


def canonical_index(name: str, num_classes: int = 7) -> int | None:
    """Canonical label index of a class name, or None when unknown or outside the label set
    (for example contempt in a 7-class setting)."""
    canon = canonical_name(name)
    names = class_names(num_classes)
    return names.index(canon) if canon in names else None
