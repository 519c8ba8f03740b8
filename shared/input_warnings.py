"""Inputs that the method handles badly, said in words before (or while) the job runs.

``input_warnings`` is pure: from the sizes and transparency of the content and
style images and the job's parameters, a list of warnings (a stable ``code`` and
a sentence for people). The images may be decoded Pillow images, Pillow images
opened only to their header, or ``ImageInfo`` from ``inspect_image``: only the
size and whether there is an alpha channel are read. No pixel is needed, so the
API can answer at submit time; the worker, which decodes the images, can as
well. The size is the stored one: an EXIF rotation swaps width and height,
which changes none of these checks (they use the longer and shorter sides).

What is warned about, and why:

* ``content_short_side``: the output's shorter side under SHORT_SIDE_PX. VGG19
  sees the image at 1/8 (the content layer) and 1/16 (the deepest style layer)
  of its size, so a 512x77 output leaves the network 4 or 5 rows: the content's
  structure does not survive. A larger size or a crop helps.
* ``content_upscaled`` / ``style_upscaled``: an image enlarged more than
  MAX_UPSCALE times to the size it is used at; the enlargement is blurry, and a
  blurry style gives a blurry, washed-out texture (a 64 px style used at 256 px).
* ``content_alpha``: transparent areas are stylized as if white; the output keeps
  the content's alpha, so they stay transparent.
* ``style_alpha``: a style's transparent areas count as white paint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from shared.images import ImageInfo, has_alpha
from shared.params import MAX_SIZE_PX, StyleParams

SHORT_SIDE_PX = 128  # below this the deepest layers see fewer than 8 positions across
MAX_UPSCALE = 2.0  # an input enlarged more than this many times looks blurry

AnyImage = Image.Image | ImageInfo


@dataclass(frozen=True)
class InputWarning:
    """One warning: ``code`` for programs, ``message`` for people."""

    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def input_warnings(
    content: AnyImage, styles: Sequence[AnyImage], params: StyleParams
) -> list[InputWarning]:
    """The warnings for a job with these inputs and ``params`` (empty when all is well)."""
    found: list[InputWarning] = []
    width, height = _size(content)
    long_side, short_side = max(width, height), min(width, height)
    size = params.size
    out_short = max(1, round(short_side * size / long_side))
    if out_short < SHORT_SIDE_PX:
        needed = math.ceil(SHORT_SIDE_PX * long_side / short_side)
        fix = (
            f"use size {needed} or more, or crop the content"
            if needed <= MAX_SIZE_PX
            else "crop the content to a less elongated shape"
        )
        found.append(
            InputWarning(
                "content_short_side",
                f"the content is {width}x{height}: at size {size} its shorter side is "
                f"{out_short} px, too few for the network to keep its structure "
                f"({SHORT_SIDE_PX} px or more works well); {fix}",
            )
        )
    if size > MAX_UPSCALE * long_side:
        found.append(
            InputWarning(
                "content_upscaled",
                f"the content is {width}x{height} and is enlarged {size / long_side:.1f}x to "
                f"size {size}: the result will look blurry; use a larger content or size "
                f"{long_side} or less",
            )
        )
    if _alpha(content):
        found.append(
            InputWarning(
                "content_alpha",
                "the content has transparent areas: they are stylized as if white, and the "
                "output keeps the content's transparency",
            )
        )
    used_at = max(1, round(size * params.style_scale))
    for index, style in enumerate(styles):
        s_width, s_height = _size(style)
        s_long = max(s_width, s_height)
        if used_at > MAX_UPSCALE * s_long:
            found.append(
                InputWarning(
                    "style_upscaled",
                    f"style[{index}] is {s_width}x{s_height} and is enlarged "
                    f"{used_at / s_long:.1f}x to {used_at} px (size x style_scale): its "
                    f"texture will come out blurry; use a style of at least "
                    f"{math.ceil(used_at / MAX_UPSCALE)} px, or a smaller style_scale",
                )
            )
        if _alpha(style):
            found.append(
                InputWarning(
                    "style_alpha",
                    f"style[{index}] has transparent areas: they count as white paint",
                )
            )
    return found


def _size(image: AnyImage) -> tuple[int, int]:
    if isinstance(image, ImageInfo):
        return image.width, image.height
    return image.size


def _alpha(image: AnyImage) -> bool:
    if isinstance(image, ImageInfo):
        return image.has_alpha
    return has_alpha(image)
