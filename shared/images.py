"""Decoding uploaded images safely (Pillow only: the API never imports torch)."""

from __future__ import annotations

import io
import warnings

from PIL import Image

from shared.errors import InvalidInputError

# Pillow's decompression-bomb guard, made an error: at most this many pixels per image.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


def decode_image(
    data: bytes, *, field: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """Decode ``data`` into an RGB image, or raise InvalidInputError naming ``field``.

    The pixel count is checked from the header before any pixel is decoded, so a
    decompression bomb costs nothing. Transparent images are flattened onto white.
    """
    if not data:
        raise InvalidInputError(f"{field}: the file is empty", field=field, code="invalid_image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise InvalidInputError(
                    f"{field}: {width}x{height} is {width * height} pixels, "
                    f"over the limit of {max_pixels}",
                    field=field,
                    code="image_too_large",
                    details={"width": width, "height": height, "max_pixels": max_pixels},
                )
            img.load()
    except InvalidInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInputError(
            f"{field}: the image is too large to decode safely",
            field=field,
            code="image_too_large",
        ) from None
    except Exception as exc:  # Pillow's decoders raise many kinds; all mean "not readable"
        raise InvalidInputError(
            f"{field}: not a readable image ({exc.__class__.__name__})",
            field=field,
            code="invalid_image",
        ) from None
    if img.width < 1 or img.height < 1:
        raise InvalidInputError(
            f"{field}: the image has no pixels", field=field, code="invalid_image"
        )
    try:
        return _to_rgb(img)
    except Exception as exc:  # an exotic mode Pillow decodes but cannot convert
        raise InvalidInputError(
            f"{field}: unsupported image mode {img.mode} ({exc.__class__.__name__})",
            field=field,
            code="invalid_image",
        ) from None


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB pixels; transparency is flattened onto white."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")
