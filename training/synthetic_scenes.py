"""Procedural indoor scenes of whole objects made of visually distinct parts.

Every object is drawn as 2-4 parts of clearly different colour and texture, so a model trained on
parts (the stand-in for SAM's part bias) visibly splits it, while a model trained on whole objects
must learn to group the parts. Scenes have wall/floor textures, occlusion (objects are painted
back to front), objects standing on furniture, lighting gain/gradient and sensor noise.
``synthetic.write_dataset`` writes them as a dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from saom_ros.classes import SAOM_CLASSES

# The synthetic world's vocabulary: SAOM classes with recognisable shapes; ids are positions + 1.
SYNTH_CLASSES: tuple[str, ...] = (
    "Fridge", "Sofa", "Bed", "Toilet", "Laptop", "Microwave", "Cabinet", "DiningTable", "Mug",
    "Vase",
)
assert set(SYNTH_CLASSES) <= set(SAOM_CLASSES)

MIN_OBJECT_AREA = 120   # visible pixels below which an object is not annotated (too occluded)
MIN_PART_AREA = 24      # same for parts
MIN_VISIBLE_FRACTION = 0.25

RGB = tuple[int, int, int]


@dataclass
class Part:
    """One drawn part: where it is (in full-image pixels) and how it looks."""

    mask: np.ndarray          # bool[H, W], before occlusion
    color: RGB
    texture: str              # one of TEXTURES


@dataclass
class SceneObject:
    """A visible whole object with its visible parts (masks after occlusion)."""

    class_name: str
    mask: np.ndarray                              # bool[H, W]
    parts: list[np.ndarray] = field(default_factory=list)


@dataclass
class Scene:
    image: np.ndarray                             # uint8[H, W, 3] RGB
    objects: list[SceneObject]


# ----------------------------------------------------------------------------- drawing primitives
def _canvas(hw: tuple[int, int]) -> np.ndarray:
    return np.zeros(hw, np.uint8)


def rect(hw: tuple[int, int], x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    m = _canvas(hw)
    cv2.rectangle(m, (round(x0), round(y0)), (round(x1), round(y1)), 1, thickness=-1)
    return m.astype(bool)


def ellipse(hw: tuple[int, int], cx: float, cy: float, rx: float, ry: float,
            start: float = 0, end: float = 360) -> np.ndarray:
    m = _canvas(hw)
    cv2.ellipse(m, (round(cx), round(cy)), (max(1, round(rx)), max(1, round(ry))), 0, start, end, 1,
                thickness=-1)
    return m.astype(bool)


def poly(hw: tuple[int, int], points: Sequence[tuple[float, float]]) -> np.ndarray:
    m = _canvas(hw)
    cv2.fillPoly(m, [np.round(np.asarray(points)).astype(np.int32)], 1)
    return m.astype(bool)


def ring(hw: tuple[int, int], cx: float, cy: float, rx: float, ry: float,
         width: float) -> np.ndarray:
    m = _canvas(hw)
    cv2.ellipse(m, (round(cx), round(cy)), (max(1, round(rx)), max(1, round(ry))), 0, 0, 360, 1,
                thickness=max(2, round(width)))
    return m.astype(bool)


# ----------------------------------------------------------------------------- textures and colours
TEXTURES = ("solid", "stripes", "checker", "grain", "speckle")


def _jitter(rng: np.random.Generator, color: RGB, amount: int = 25) -> RGB:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


def texture(rng: np.random.Generator, hw: tuple[int, int], color: RGB, kind: str) -> np.ndarray:
    """A float32[H, W, 3] image of ``color`` with a ``kind`` pattern over the whole frame."""
    h, w = hw
    base = np.asarray(color, np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "solid":
        shade = np.ones((h, w), np.float32)
    elif kind == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(5, 14)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period
        shade = np.where((phase % 1.0) < 0.5, 1.0, 0.72).astype(np.float32)
    elif kind == "checker":
        size = int(rng.integers(5, 12))
        shade = np.where(((xx // size) + (yy // size)) % 2 == 0, 1.0, 0.75).astype(np.float32)
    elif kind == "grain":
        period = rng.uniform(6, 16)
        warp = 3.0 * np.sin(yy / rng.uniform(8, 20))
        shade = (0.85 + 0.15 * np.sin(2 * np.pi * (xx + warp) / period)).astype(np.float32)
    elif kind == "speckle":
        shade = (1.0 - 0.25 * rng.random((h, w))).astype(np.float32)
    else:
        raise ValueError(f"unknown texture {kind!r}; known: {', '.join(TEXTURES)}")
    return shade[..., None] * base


# ----------------------------------------------------------------------------- object templates
# Each template draws one object into the box (x, y, w, h) (top-left corner, size in pixels) and
# returns its parts back to front as (mask, palette slot). Slots get colours that differ strongly
# within an object.
DrawFn = Callable[[np.random.Generator, tuple[int, int], float, float, float, float],
                  list[tuple[np.ndarray, int]]]

@dataclass(frozen=True)
class Template:
    draw: DrawFn
    palette: tuple[RGB, ...]          # one colour per palette slot used by ``draw``
    textures: tuple[str, ...]         # one texture per palette slot
    height: tuple[float, float]       # object height as a fraction of the image height
    aspect: tuple[float, float]       # width / height
    small: bool = False               # stands on furniture when possible
    surface: bool = False             # other objects may stand on it


def _fridge(rng, hw, x, y, w, h):
    split = y + h * rng.uniform(0.3, 0.4)
    hx = x + w * (0.8 if rng.random() < 0.5 else 0.12)
    return [(rect(hw, x, y, x + w, split - 1), 0), (rect(hw, x, split + 1, x + w, y + h), 1),
            (rect(hw, hx, y + h * 0.08, hx + max(3, w * 0.07), split - h * 0.06), 2),
            (rect(hw, hx, split + h * 0.06, hx + max(3, w * 0.07), y + h * 0.55), 2)]


def _sofa(rng, hw, x, y, w, h):
    arm = w * rng.uniform(0.1, 0.15)
    return [(rect(hw, x + arm, y, x + w - arm, y + h * 0.55), 0),
            (rect(hw, x + arm, y + h * 0.5, x + w - arm, y + h), 1),
            (rect(hw, x, y + h * 0.3, x + arm, y + h), 2),
            (rect(hw, x + w - arm, y + h * 0.3, x + w, y + h), 2)]


def _bed(rng, hw, x, y, w, h):
    head = w * rng.uniform(0.1, 0.16)
    return [(rect(hw, x, y, x + head, y + h), 0),
            (rect(hw, x + head, y + h * 0.4, x + w, y + h), 1),
            (rect(hw, x + head + w * 0.25, y + h * 0.35, x + w, y + h * 0.85), 2),
            (ellipse(hw, x + head + w * 0.12, y + h * 0.42, w * 0.1, h * 0.12), 3)]


def _toilet(rng, hw, x, y, w, h):
    return [(rect(hw, x + w * 0.1, y, x + w * 0.9, y + h * 0.38), 0),
            (poly(hw, [(x + w * 0.3, y + h * 0.6), (x + w * 0.7, y + h * 0.6),
                       (x + w * 0.62, y + h), (x + w * 0.38, y + h)]), 1),
            (ellipse(hw, x + w * 0.5, y + h * 0.55, w * 0.5, h * 0.17), 2),
            (ellipse(hw, x + w * 0.5, y + h * 0.53, w * 0.33, h * 0.09), 3)]


def _laptop(rng, hw, x, y, w, h):
    lean = w * rng.uniform(-0.08, 0.08)
    return [(poly(hw, [(x + w * 0.1 + lean, y), (x + w * 0.9 + lean, y),
                       (x + w * 0.88, y + h * 0.62), (x + w * 0.12, y + h * 0.62)]), 0),
            (poly(hw, [(x + w * 0.18 + lean, y + h * 0.08), (x + w * 0.82 + lean, y + h * 0.08),
                       (x + w * 0.8, y + h * 0.56), (x + w * 0.2, y + h * 0.56)]), 1),
            (poly(hw, [(x + w * 0.12, y + h * 0.64), (x + w * 0.88, y + h * 0.64),
                       (x + w, y + h), (x, y + h)]), 2)]


def _microwave(rng, hw, x, y, w, h):
    panel = x + w * rng.uniform(0.68, 0.76)
    return [(rect(hw, x, y, x + w, y + h), 0),
            (rect(hw, x + w * 0.07, y + h * 0.15, panel - w * 0.05, y + h * 0.85), 1),
            (rect(hw, panel, y + h * 0.1, x + w * 0.94, y + h * 0.9), 2)]


def _cabinet(rng, hw, x, y, w, h):
    return [(rect(hw, x, y, x + w, y + h * 0.12), 0),
            (rect(hw, x, y + h * 0.13, x + w * 0.5 - 1, y + h), 1),
            (rect(hw, x + w * 0.5 + 1, y + h * 0.13, x + w, y + h), 2),
            (rect(hw, x + w * 0.4, y + h * 0.35, x + w * 0.46, y + h * 0.6), 3),
            (rect(hw, x + w * 0.54, y + h * 0.35, x + w * 0.6, y + h * 0.6), 3)]


def _table(rng, hw, x, y, w, h):
    legw = max(3, w * 0.06)
    return [(rect(hw, x + w * 0.05, y + h * 0.12, x + w * 0.05 + legw, y + h), 1),
            (rect(hw, x + w * 0.95 - legw, y + h * 0.12, x + w * 0.95, y + h), 1),
            (rect(hw, x + w * 0.05, y + h * 0.12, x + w * 0.95, y + h * 0.28), 2),
            (rect(hw, x, y, x + w, y + h * 0.14), 0)]


def _mug(rng, hw, x, y, w, h):
    right = rng.random() < 0.5
    hx = x + w * (0.78 if right else 0.22)
    return [(ring(hw, hx, y + h * 0.5, w * 0.22, h * 0.25, max(2, w * 0.08)), 1),
            (rect(hw, x + w * 0.18, y + h * 0.12, x + w * 0.82, y + h), 0),
            (ellipse(hw, x + w * 0.5, y + h * 0.12, w * 0.32, h * 0.1), 2)]


def _vase(rng, hw, x, y, w, h):
    return [(rect(hw, x + w * 0.32, y, x + w * 0.68, y + h * 0.4), 0),
            (ellipse(hw, x + w * 0.5, y + h * 0.66, w * 0.5, h * 0.34), 1),
            (rect(hw, x + w * 0.05, y + h * 0.6, x + w * 0.95, y + h * 0.72), 2)]


TEMPLATES: dict[str, Template] = {
    "Fridge": Template(_fridge, ((225, 228, 232), (150, 165, 185), (40, 40, 45)),
                       ("solid", "speckle", "solid"), (0.45, 0.7), (0.45, 0.6)),
    "Sofa": Template(_sofa, ((170, 50, 50), (60, 90, 160), (200, 160, 60)),
                     ("grain", "checker", "solid"), (0.22, 0.34), (1.8, 2.4)),
    "Bed": Template(_bed, ((110, 70, 35), (235, 235, 225), (60, 140, 90), (210, 120, 170)),
                    ("grain", "solid", "stripes", "solid"), (0.25, 0.38), (1.5, 1.9)),
    "Toilet": Template(_toilet, ((240, 240, 240), (170, 200, 225), (90, 160, 210), (35, 60, 110)),
                       ("solid", "speckle", "solid", "solid"), (0.25, 0.38), (0.65, 0.8)),
    "Laptop": Template(_laptop, ((60, 60, 70), (40, 120, 210), (185, 185, 195)),
                       ("solid", "stripes", "checker"), (0.13, 0.2), (1.2, 1.5), small=True),
    "Microwave": Template(_microwave, ((200, 200, 205), (25, 25, 30), (230, 120, 40)),
                          ("speckle", "solid", "checker"), (0.12, 0.18), (1.5, 1.8), small=True),
    "Cabinet": Template(_cabinet, ((80, 55, 35), (190, 140, 80), (150, 110, 60), (230, 210, 60)),
                        ("grain", "grain", "stripes", "solid"), (0.26, 0.4), (0.9, 1.3),
                        surface=True),
    "DiningTable": Template(_table, ((150, 95, 50), (60, 40, 25), (220, 200, 150)),
                            ("grain", "solid", "stripes"), (0.2, 0.3), (1.5, 2.1), surface=True),
    "Mug": Template(_mug, ((220, 60, 60), (240, 200, 60), (70, 40, 20)),
                    ("solid", "solid", "speckle"), (0.08, 0.13), (0.8, 1.0), small=True),
    "Vase": Template(_vase, ((60, 160, 150), (150, 60, 140), (240, 230, 120)),
                     ("speckle", "stripes", "solid"), (0.13, 0.22), (0.5, 0.7), small=True),
}


# ----------------------------------------------------------------------------- scenes
def _background(rng: np.random.Generator, hw: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Wall above a random horizon, floor below, each with its own texture and a skirting board."""
    h, w = hw
    horizon = int(h * rng.uniform(0.35, 0.55))
    wall = texture(rng, hw, _jitter(rng, tuple(int(c) for c in rng.integers(120, 235, 3)), 10),
                   str(rng.choice(["solid", "stripes", "speckle"])))
    floor = texture(rng, hw, tuple(int(c) for c in rng.integers(60, 200, 3)),
                    str(rng.choice(["grain", "checker", "speckle"])))
    image = wall.copy()
    image[horizon:] = floor[horizon:]
    skirting = np.asarray(_jitter(rng, (230, 230, 225), 15), np.float32)
    image[max(0, horizon - 4):horizon] = 0.6 * skirting
    return image, horizon


def _lighting(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Global gain, a linear illumination gradient in a random direction, and sensor noise."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xx * np.cos(angle) + yy * np.sin(angle)) / max(h, w)
    gain = rng.uniform(0.7, 1.2) * (1.0 + rng.uniform(0.0, 0.35) * (ramp - ramp.mean()))
    tint = rng.uniform(0.92, 1.08, 3).astype(np.float32)
    out = image * gain[..., None] * tint + rng.normal(0, rng.uniform(1.5, 6), image.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def _draw_object(rng: np.random.Generator, hw: tuple[int, int], class_name: str,
                 box: tuple[float, float, float, float]) -> list[Part]:
    t = TEMPLATES[class_name]
    colors = [_jitter(rng, c) for c in t.palette]
    return [Part(mask, colors[slot], t.textures[slot]) for mask, slot in t.draw(rng, hw, *box)]


def _place(rng: np.random.Generator, hw: tuple[int, int], class_name: str, horizon: int,
           surfaces: list[tuple[float, float, float]]) -> tuple[float, float, float, float]:
    """A box (x, y, w, h) for ``class_name``: on furniture if it is small and some exists, else on
    the floor."""
    H, W = hw
    t = TEMPLATES[class_name]
    h = H * rng.uniform(*t.height)
    w = h * rng.uniform(*t.aspect)
    if t.small and surfaces and rng.random() < 0.7:
        top, left, right = surfaces[int(rng.integers(len(surfaces)))]
        x = rng.uniform(left - 0.2 * w, max(left - 0.2 * w, right - 0.8 * w))
        return x, top - h + 2, w, h
    bottom = rng.uniform(horizon + 0.1 * (H - horizon), H + 0.05 * h)
    x = rng.uniform(-0.1 * w, W - 0.9 * w)
    return x, bottom - h, w, h


def generate_scene(rng: np.random.Generator, size: int = 256, num_objects: tuple[int, int] = (3, 6),
                   class_names: Sequence[str] = SYNTH_CLASSES) -> Scene:
    """One scene: background, objects painted back to front, lighting; masks after occlusion."""
    hw = (size, size)
    image, horizon = _background(rng, hw)
    n = int(rng.integers(num_objects[0], num_objects[1] + 1))
    names = [str(c) for c in rng.choice(list(class_names), size=n)]
    # Furniture first (back to front by its bottom edge), then small objects on top of it.
    big = [c for c in names if not TEMPLATES[c].small]
    small = [c for c in names if TEMPLATES[c].small]
    placed: list[tuple[str, tuple[float, float, float, float]]] = []
    surfaces: list[tuple[float, float, float]] = []
    for name in big:
        box = _place(rng, hw, name, horizon, [])
        placed.append((name, box))
    placed.sort(key=lambda item: item[1][1] + item[1][3])
    for name, (x, y, w, h) in placed:
        if TEMPLATES[name].surface:
            surfaces.append((y, x, x + w))
    drawn: list[tuple[str, list[Part]]] = [(n_, _draw_object(rng, hw, n_, b)) for n_, b in placed]
    drawn += [(n_, _draw_object(rng, hw, n_, _place(rng, hw, n_, horizon, surfaces)))
              for n_ in small]

    # Paint parts in order; a label image of part indices resolves occlusion.
    owner = np.full(hw, -1, np.int32)
    flat: list[tuple[int, Part]] = []
    for obj_index, (_, parts) in enumerate(drawn):
        for part in parts:
            k = len(flat)
            flat.append((obj_index, part))
            image[part.mask] = texture(rng, hw, part.color, part.texture)[part.mask]
            owner[part.mask] = k
    image = _lighting(rng, image)

    objects: list[SceneObject] = []
    for obj_index, (name, parts) in enumerate(drawn):
        ks = [k for k, (o, _) in enumerate(flat) if o == obj_index]
        full = np.logical_or.reduce([flat[k][1].mask for k in ks])
        visible_parts = [owner == k for k in ks]
        visible = np.logical_or.reduce(visible_parts)
        area = int(visible.sum())
        if area < MIN_OBJECT_AREA or area < MIN_VISIBLE_FRACTION * max(1, int(full.sum())):
            continue
        parts_kept = [p for p in visible_parts if p.sum() >= MIN_PART_AREA]
        objects.append(SceneObject(name, visible, parts_kept))
    return Scene(image, objects)
