"""Data records shared by readers, training, conversion and the runtime.

The readers themselves (Kryptonite layout, LFW, identity folders) live here
too, so the runtime never imports training code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Pair types, as written by ``training.prepare`` into pairs.csv.
GENUINE = "genuine"            # two real images of the same person (label 1)
IMPOSTOR = "impostor"          # real images of two different people (label 0)
FAKE_OF_SAME = "fake-of-same"  # real A vs a fake showing A (label 0)
FAKE_OF_OTHER = "fake-of-other"  # real A vs a fake showing someone else (label 0)
PAIR_TYPES = (GENUINE, IMPOSTOR, FAKE_OF_SAME, FAKE_OF_OTHER)


class DataError(ValueError):
    """Bad dataset input; the message names the file (and line where there is one)."""


@dataclass(frozen=True)
class Sample:
    """One image of an identity; a fake is tied to the identity whose face it shows."""

    path: Path
    identity: str
    is_fake: bool = False
    attack: str = ""  # synthesis method for fakes ("" for real images or unknown)


@dataclass(frozen=True)
class Pair:
    """Two images with a label (1 = two real images of the same person)."""

    pair_id: str
    path_a: Path
    path_b: Path
    label: int | None = None
    type: str = ""
    attack: str = ""
    fold: int = -1  # LFW fold (0-9) where known
