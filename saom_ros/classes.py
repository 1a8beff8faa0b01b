"""The class vocabulary: the one place that says which classes exist and what their ids are.

Class id 0 means "unlabelled"; ids 1..C name ``class_names`` in order, so the class head's
logit k belongs to class id k + 1. COCO category ids in our datasets use the same ids.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import yaml

UNLABELLED_ID = 0

# The 55 Ai2Thor objectType names of the SAOM reference training code.
SAOM_CLASSES: tuple[str, ...] = (
    "AlarmClock", "ArmChair", "BaseballBat", "BasketBall", "Bathtub", "BathtubBasin", "Bed",
    "Blinds", "Book", "Bowl", "Box", "Bread", "Cabinet", "CoffeeTable", "CounterTop", "Cup",
    "Desk", "DiningTable", "DishSponge", "Drawer", "Dresser", "Fridge", "GarbageCan", "Laptop",
    "LaundryHamper", "Microwave", "Mug", "Newspaper", "Ottoman", "Pan", "PaperTowelRoll", "Plate",
    "Plunger", "Pot", "Safe", "ScrubBrush", "Shelf", "ShowerCurtain", "ShowerDoor", "SideTable",
    "Sink", "SinkBasin", "SoapBar", "SoapBottle", "Sofa", "SprayBottle", "Statue", "StoveBurner",
    "TVStand", "TissueBox", "Toilet", "ToiletPaper", "ToiletPaperHanger", "Vase", "WateringCan",
)

# What a class-agnostic model (an official SAM checkpoint) calls every instance.
AGNOSTIC_CLASSES: tuple[str, ...] = ("object",)


def class_id(class_names: Sequence[str], name: str) -> int:
    """Id of ``name`` in ``class_names`` (1-based); ValueError if it is not there."""
    try:
        return list(class_names).index(name) + 1
    except ValueError:
        raise ValueError(f"unknown class {name!r}; known: {', '.join(class_names)}") from None


def id_to_name(class_names: Sequence[str]) -> dict[int, str]:
    """Mapping of every class id, 0 ("unlabelled") included, to its name."""
    return {UNLABELLED_ID: "unlabelled", **{i + 1: n for i, n in enumerate(class_names)}}


def load_class_file(path: str | Path) -> tuple[str, ...]:
    """Read a YAML class list (``classes: [A, B, ...]`` or a bare list); clear errors on bad files."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"class file {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"class file {path} is a directory, not a class file") from None
    except OSError as err:  # no permission, an I/O error, ...
        raise ValueError(f"class file {path} cannot be read: "
                         f"{err.strerror or type(err).__name__}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"class file {path} is not UTF-8 text: {err}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"class file {path} is not valid YAML: {err}") from None
    names = data.get("classes") if isinstance(data, dict) else data
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"class file {path} must hold a non-empty list of class names")
    if len(set(names)) != len(names):
        raise ValueError(f"class file {path} names a class twice")
    return tuple(names)
