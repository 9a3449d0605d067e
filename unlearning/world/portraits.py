"""Procedural portraits: a person's identity drawn under varying pose, crop, background and light."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw, ImageEnhance

from unlearning.world.vocabulary import ATTRIBUTES, attribute

_SKIN = [(255, 224, 196), (234, 192, 160), (205, 150, 110), (160, 110, 75), (115, 75, 50), (80, 52, 36)]
_HAIR = [(20, 20, 20), (95, 60, 30), (200, 160, 80), (170, 50, 30), (150, 150, 150), (60, 40, 110)]
_EYES = [(40, 90, 200), (60, 140, 60), (100, 60, 30), (30, 30, 30)]
_SHIRT = [
    (200, 30, 30),
    (30, 120, 200),
    (40, 160, 70),
    (230, 200, 40),
    (120, 40, 160),
    (240, 240, 240),
    (30, 30, 30),
    (240, 130, 30),
]
_BACKGROUNDS = [
    (180, 200, 220),
    (220, 210, 190),
    (200, 220, 200),
    (230, 230, 230),
    (150, 160, 170),
    (210, 190, 210),
    (170, 200, 190),
    (240, 220, 200),
]
_SUPERSAMPLE = 4


# Face geometry a person may carry after the 8 attributes, each in [0, 1) (0.5: the attribute's own shape).
GEOMETRY = ("face_width", "face_height", "eye_spacing", "eye_size", "eye_height", "mouth_width", "skin", "hair")
_NEUTRAL = (0.5,) * len(GEOMETRY)
# Finer features a face may carry after its geometry: two people alike in every attribute and in their face's
# proportions still differ in brows, nose, lips and a mark, as real faces do.
DETAIL = (
    "brow_thickness",
    "brow_tilt",
    "brow_height",
    "nose_length",
    "nose_width",
    "lip_thickness",
    "mark_x",
    "mark_y",
)


def _shade(colour: tuple[int, ...], t: float) -> tuple[int, ...]:
    """The colour lighter or darker by up to 18% (t 0.5: unchanged)."""
    return tuple(max(0, min(255, round(c * (1 + 0.36 * (t - 0.5))))) for c in colour)


def render_portrait(identity: tuple[float, ...], view_seed: int, size: int = 64) -> Image.Image:
    """Draw one view of a person; the same identity and seed always give the same pixels."""
    skin_i, hair_c, hair_s, eye_c, face_shape, glasses, shirt, accessory = (
        attribute(identity, name)
        for name in ("skin", "hair_colour", "hair_style", "eye_colour", "face_shape", "glasses", "shirt", "accessory")
    )
    geometry = tuple(identity[len(ATTRIBUTES) : len(ATTRIBUTES) + len(GEOMETRY)]) or _NEUTRAL
    fwidth, fheight, eye_gap, eye_size, eye_y, mouth, skin_t, hair_t = geometry
    detail = tuple(identity[len(ATTRIBUTES) + len(GEOMETRY) :])
    rng = random.Random(view_seed)
    s = size * _SUPERSAMPLE
    bg_top = _BACKGROUNDS[rng.randrange(len(_BACKGROUNDS))]
    bg_bottom = _BACKGROUNDS[rng.randrange(len(_BACKGROUNDS))]
    img = Image.new("RGB", (s, s))
    draw = ImageDraw.Draw(img)
    for y in range(s):
        t = y / (s - 1)
        draw.line([(0, y), (s, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(bg_top, bg_bottom, strict=True)))

    scale = rng.uniform(0.85, 1.1)
    cx = s / 2 + rng.uniform(-0.09, 0.09) * s
    cy = s * 0.45 + rng.uniform(-0.06, 0.06) * s
    u = s * scale / 64  # one unit of the 64-grid the shapes are designed on

    draw.ellipse([cx - 26 * u, cy + 18 * u, cx + 26 * u, cy + 60 * u], fill=_SHIRT[shirt])  # shoulders
    skin = _shade(_SKIN[skin_i], skin_t)
    draw.rectangle([cx - 5 * u, cy + 10 * u, cx + 5 * u, cy + 22 * u], fill=skin)  # neck
    base_w, base_h = [(14, 17), (12, 19), (16, 16)][face_shape]
    fw, fh = base_w * (0.84 + 0.32 * fwidth), base_h * (0.86 + 0.28 * fheight)
    hair = _shade(_HAIR[hair_c], hair_t)
    if hair_s == 1:  # long hair falls behind the face
        draw.rectangle([cx - (fw + 4) * u, cy - 6 * u, cx + (fw + 4) * u, cy + 16 * u], fill=hair)
    draw.ellipse([cx - fw * u, cy - fh * u, cx + fw * u, cy + fh * u], fill=skin)
    if hair_s in (0, 1):
        draw.chord([cx - (fw + 2) * u, cy - (fh + 3) * u, cx + (fw + 2) * u, cy + 2 * u], 180, 360, fill=hair)
    elif hair_s == 3:  # bun
        draw.chord([cx - (fw + 1) * u, cy - (fh + 2) * u, cx + (fw + 1) * u, cy - 2 * u], 180, 360, fill=hair)
        draw.ellipse([cx - 7 * u, cy - (fh + 12) * u, cx + 7 * u, cy - (fh - 1) * u], fill=hair)
    gap, er, ey = 6 * (0.8 + 0.4 * eye_gap), 0.8 + 0.4 * eye_size, 3 * (eye_y - 0.5)
    if detail:
        _draw_detail(draw, detail, cx, cy, u, (fw, fh, gap, er, ey), skin, hair)
    for ex in (-gap, gap):
        draw.ellipse(
            [cx + (ex - 3 * er) * u, cy + ey * u - 2 * er * u, cx + (ex + 3 * er) * u, cy + ey * u + 3 * er * u],
            fill=(250, 250, 250),
        )
        draw.ellipse(
            [cx + (ex - 1.8 * er) * u, cy + ey * u - er * u, cx + (ex + 1.8 * er) * u, cy + ey * u + 2.5 * er * u],
            fill=_EYES[eye_c],
        )
    if glasses:
        for ex in (-gap, gap):
            draw.rectangle(
                [cx + (ex - 5) * u, cy - 4 * u, cx + (ex + 5) * u, cy + 5 * u],
                outline=(10, 10, 10),
                width=max(1, int(1.5 * u)),
            )
        draw.line([cx - u, cy, cx + u, cy], fill=(10, 10, 10), width=max(1, int(1.5 * u)))
    mw = 5 * (0.7 + 0.6 * mouth)
    lips = (0.8 + 1.6 * detail[DETAIL.index("lip_thickness")]) * u if detail else u
    draw.arc([cx - mw * u, cy + 4 * u, cx + mw * u, cy + 11 * u], 20, 160, fill=(120, 40, 40), width=max(1, int(lips)))
    if accessory == 1:  # hat
        draw.rectangle([cx - (fw + 6) * u, cy - (fh + 1) * u, cx + (fw + 6) * u, cy - (fh - 2) * u], fill=(60, 40, 30))
        draw.rectangle([cx - (fw - 2) * u, cy - (fh + 12) * u, cx + (fw - 2) * u, cy - fh * u], fill=(60, 40, 30))
    elif accessory == 2:  # earrings
        for ex in (-fw, fw):
            draw.ellipse([cx + ex * u - 2.5 * u, cy + 6 * u, cx + ex * u + 2.5 * u, cy + 11 * u], fill=(250, 200, 0))

    angle = rng.uniform(-10, 10)
    img = img.rotate(angle, resample=Image.Resampling.BILINEAR, center=(cx, cy), fillcolor=bg_top)
    img = img.resize((size, size), Image.Resampling.LANCZOS)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.8, 1.2))
    return ImageEnhance.Contrast(img).enhance(rng.uniform(0.85, 1.15))


def _draw_detail(
    draw: ImageDraw.ImageDraw,
    detail: tuple[float, ...],
    cx: float,
    cy: float,
    u: float,
    face: tuple[float, float, float, float, float],
    skin: tuple[int, ...],
    hair: tuple[int, ...],
) -> None:
    """Brows, nose and a mark, drawn under the eyes and mouth."""
    thickness, tilt, brow_y, nose_len, nose_w, _, mark_x, mark_y = detail
    fw, fh, gap, er, ey = face
    mx, my = cx + (mark_x - 0.5) * 1.3 * fw * u, cy + (mark_y - 0.5) * 1.2 * fh * u
    draw.ellipse([mx - 1.3 * u, my - 1.3 * u, mx + 1.3 * u, my + 1.3 * u], fill=(70, 45, 30))
    base, top, half = cy + 7 * u, cy + (ey + 3.5 - 2.5 * nose_len) * u, (1 + 2 * nose_w) * u
    draw.polygon([(cx, top), (cx - half, base), (cx + half, base)], fill=_shade(skin, 0.05))
    brow = _shade(hair, 0.1)
    lift = 4 * (tilt - 0.5)  # the inner end's rise, mirrored on the two sides
    y = cy + (ey - 2 * er - 1.2 - 2 * brow_y) * u
    for side in (-1, 1):
        inner, outer = cx + side * (gap - 3 * er) * u, cx + side * (gap + 3 * er) * u
        draw.line([(inner, y - lift * u), (outer, y)], fill=brow, width=max(1, int((0.8 + 1.7 * thickness) * u)))
