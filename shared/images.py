"""Checking and decoding uploaded images safely (Pillow only: the API never imports torch).

Only three formats are accepted, JPEG, PNG and WebP: Pillow is asked to try
those three plugins and no other, so the rarely used ones (GIF, TIFF, BMP, ICO,
PCX, PPM, TGA, DDS…) never run on a client's bytes, in the API or in a worker.
A file in another image format is named in the error (from its first bytes).

Two levels of work:

- ``inspect_image`` (the API, at submit): the header (format, size, the pixel
  limit) and a check of the whole file that costs what the file weighs, never
  what its pixels weigh: a PNG's chunks and their checksums through IEND; a
  baseline JPEG decoded at an eighth of its size (its whole compressed stream
  is read, in a few rows of memory); a progressive JPEG and a WebP by their
  headers only (decoding either takes memory in proportion to its pixels, even
  at a reduced size, and libwebp refuses a cut-short file when it opens one). So
  a request full of tiny files that claim forty million pixels each cannot make
  an API process balloon. What a worker then finds damaged fails the job with
  ``invalid_image``.
- ``decode_image`` (a worker, or ``stylequeue stylize``): every pixel, as RGB
  (or RGBA when asked to keep a transparent image's alpha), turned upright.

Orientation: a phone stores a photo as its sensor read it and an EXIF
Orientation tag saying how to turn it for display. ``decode_image`` applies
the tag (``upright``), so a job, ``stylequeue stylize`` and anything that reads
an image through here see the photo the way its owner does.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageOps

from shared.errors import InvalidInputError, UnsupportedImageFormatError

# Pillow's decompression-bomb guard, made an error: at most this many pixels per image.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000

# Pillow's format names, the only plugins ever tried, and how people write them.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
FORMAT_NAMES = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP"}
ACCEPTED_TEXT = "JPEG, PNG or WebP"
ACCEPTED_MIMETYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}

ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 upright, 6 turn 90 degrees clockwise, ...
JPEG_CHECK_SCALE = 8  # a JPEG is checked decoded at 1/8 of its size (libjpeg's DCT scaling)

# First bytes of image formats that are refused, so that the error can name them.
_OTHER_FORMATS: tuple[tuple[bytes, int, str], ...] = (
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"BM", 0, "BMP"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"DDS ", 0, "DDS"),
    (b"8BPS", 0, "PSD"),
    (b"icns", 0, "ICNS"),
    (b"qoif", 0, "QOI"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"),
    (b"ftypavif", 4, "AVIF"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"gimp xcf", 0, "XCF"),
    (b"\x59\xa6\x6a\x95", 0, "Sun raster"),
    (b"#?RADIANCE", 0, "Radiance HDR"),
    (b"\x76\x2f\x31\x01", 0, "OpenEXR"),
    (b"SIMPLE  =", 0, "FITS"),
    (b"\x01\xda", 0, "SGI"),
    (b"Image type:", 0, "IM"),
    (b"/* XPM */", 0, "XPM"),
    (b"#define", 0, "XBM"),
)
_NETPBM = {b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7", b"Pf", b"PF"}


@dataclass(frozen=True)
class ImageInfo:
    """What ``inspect_image`` found: Pillow's format name, the size in pixels (as stored,
    before any EXIF rotation) and whether the image has transparency."""

    format: str
    width: int
    height: int
    has_alpha: bool = False

    @property
    def mimetype(self) -> str:
        return ACCEPTED_MIMETYPES[self.format]


def other_format(data: bytes) -> str | None:
    """The name of a refused image format that ``data`` starts like, if any."""
    for magic, offset, name in _OTHER_FORMATS:
        if data.startswith(magic, offset):
            return name
    if data[:2] in _NETPBM and data[2:3] in (b"\n", b"\r", b" ", b"\t", b"#"):
        return "PPM"
    if data[:1] == b"\x0a" and data[1:2] in (b"\x00", b"\x02", b"\x03", b"\x04", b"\x05"):
        return "PCX"
    if data.rstrip(b"\x00").endswith(b"TRUEVISION-XFILE.") or _looks_like_tga(data):
        return "TGA"
    head = data[:256].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096]):
        return "SVG"
    return None


def _looks_like_tga(data: bytes) -> bool:
    # TGA has no magic number: a colour map or none, an image type that goes with it
    # (a colour map's fields all zero when there is none), a pixel depth.
    if len(data) < 18 or data[16] not in (8, 15, 16, 24, 32):
        return False
    if data[1] == 0:
        return data[2] in (2, 3, 10, 11) and data[3:8] == bytes(5)
    return data[1] == 1 and data[2] in (1, 9)


def accepted_format(data: bytes) -> str | None:
    """``data``'s Pillow format name if it starts like a JPEG, PNG or WebP file, else None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def input_mimetype(head: bytes) -> str:
    """The media type of a stored input from its first bytes (octet-stream if not ours)."""
    found = accepted_format(head)
    return ACCEPTED_MIMETYPES[found] if found else "application/octet-stream"


def inspect_image(
    data: bytes, *, field: str, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> ImageInfo:
    """Check an upload without decoding it at full size, or raise a 4xx naming ``field``."""
    with _opened(data, field=field, max_pixels=max_pixels) as img:
        name = FORMAT_NAMES[img.format or ""]
        info = ImageInfo(img.format or "", *img.size, has_alpha=has_alpha(img))
        try:
            if img.format == "PNG":
                img.verify()  # every chunk's CRC through IEND; no pixel decoded
            elif img.format == "JPEG" and not img.info.get("progressive"):
                # Pillow picks the largest scale whose result is at least this size.
                width, height = img.size
                img.draft(
                    None, (max(1, width // JPEG_CHECK_SCALE), max(1, height // JPEG_CHECK_SCALE))
                )
                img.load()
            # A progressive JPEG keeps every coefficient of the image in memory however
            # small it is decoded, and a WebP is decoded at full size: their headers are
            # their check (libwebp refuses a cut-short file when it opens).
        except Exception as exc:  # each decoder raises its own kinds
            raise _damaged(field, name, exc) from None
        return info


def decode_image(
    data: bytes,
    *,
    field: str,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    keep_alpha: bool = False,
) -> Image.Image:
    """Decode ``data`` into an upright RGB image, or raise InvalidInputError naming ``field``.

    The format and the pixel count are checked from the header before any pixel
    is decoded, so a decompression bomb costs nothing. The EXIF orientation is
    applied. Transparent images are flattened onto white, unless ``keep_alpha``:
    then an image with transparency comes back RGBA (any other, RGB).
    """
    with _opened(data, field=field, max_pixels=max_pixels) as img:
        name = FORMAT_NAMES[img.format or ""]
        try:
            img.load()
        except Exception as exc:  # each decoder raises its own kinds
            raise _damaged(field, name, exc) from None
        try:
            img = upright(img)
            if keep_alpha and has_alpha(img):
                return img.convert("RGBA")
            return _to_rgb(img)
        except Exception:  # an exotic mode Pillow decodes but cannot convert
            raise InvalidInputError(
                f"{field}: a {name} image in a pixel format that cannot be converted to RGB"
                f" ({img.mode})",
                field=field,
                code="invalid_image",
                details={"format": name, "mode": img.mode},
            ) from None


@contextmanager
def _opened(data: bytes, *, field: str, max_pixels: int) -> Iterator[Image.Image]:
    """The image with its header read (only by the accepted plugins), its size in bounds."""
    if not data:
        raise InvalidInputError(f"{field}: the file is empty", field=field, code="invalid_image")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img: Image.Image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidInputError(
                f"{field}: the image has too many pixels to decode safely",
                field=field,
                code="image_too_large",
                details={"max_pixels": max_pixels},
            ) from None
        except Exception:  # not one of ours, or a header its plugin refused
            raise _not_accepted(data, field) from None
        with img:
            width, height = img.size
            if width < 1 or height < 1:
                raise InvalidInputError(
                    f"{field}: the image has no pixels", field=field, code="invalid_image"
                )
            if width * height > max_pixels:
                raise InvalidInputError(
                    f"{field}: {width}x{height} is {width * height} pixels, "
                    f"over the limit of {max_pixels}",
                    field=field,
                    code="image_too_large",
                    details={"width": width, "height": height, "max_pixels": max_pixels},
                )
            yield img


def _not_accepted(data: bytes, field: str) -> InvalidInputError:
    accepted = [FORMAT_NAMES[f] for f in ACCEPTED_FORMATS]
    found = other_format(data)
    if found is not None:
        return UnsupportedImageFormatError(
            f"{field}: {found} images are not accepted; send {ACCEPTED_TEXT}",
            field=field,
            details={"format": found, "accepted": accepted},
        )
    own = accepted_format(data)
    if own is not None:  # the right first bytes, then a header that does not parse
        return _damaged(field, FORMAT_NAMES[own], None)
    return InvalidInputError(
        f"{field}: not an image, or a format other than {ACCEPTED_TEXT}",
        field=field,
        code="invalid_image",
        details={"accepted": accepted},
    )


def _damaged(field: str, name: str, exc: BaseException | None) -> InvalidInputError:
    if isinstance(exc, Image.DecompressionBombError):
        return InvalidInputError(
            f"{field}: the image has too many pixels to decode safely",
            field=field,
            code="image_too_large",
        )
    return InvalidInputError(
        f"{field}: the {name} file is damaged or cut short (it does not decode)",
        field=field,
        code="invalid_image",
        details={"format": name},
    )


def has_alpha(img: Image.Image) -> bool:
    """Whether ``img`` has an alpha channel or a transparent palette entry."""
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF Orientation tag says (itself when there is none, or it is 1)."""
    orientation = img.getexif().get(ORIENTATION_TAG, 1)
    if orientation in (None, 1):
        return img
    turned = ImageOps.exif_transpose(img)
    return img if turned is None else turned


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB pixels; transparency is flattened onto white."""
    if has_alpha(img):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")
