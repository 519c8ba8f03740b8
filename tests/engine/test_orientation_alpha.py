"""Images are read upright (EXIF orientation applied), and a content's alpha survives a transfer."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image

from shared.images import ORIENTATION_TAG, decode_image
from shared.params import parse_params
from worker.engine import Network, encode_png, pil_to_tensor, transfer

DATA = Path(__file__).resolve().parents[1] / "data"
RED, BLUE = (220, 20, 20), (20, 20, 220)


def _sideways_jpeg(orientation: int = 6) -> bytes:
    """A 128x96 JPEG as a phone's sensor stores it: red top half, blue bottom half, tagged."""
    img = Image.new("RGB", (128, 96), BLUE)
    img.paste(RED, (0, 0, 128, 48))
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    out = io.BytesIO()
    img.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def _mean_colour(img: Image.Image, box: tuple[int, int, int, int]) -> tuple[float, ...]:
    t = pil_to_tensor(img.crop(box)).mul(255)
    return tuple(float(c) for c in t.mean(dim=(1, 2)))


def test_orientation_6_is_turned_upright_on_decode() -> None:
    img = decode_image(_sideways_jpeg(6), field="content")
    # Orientation 6: the stored top row is the displayed right-hand side.
    assert img.size == (96, 128)
    right = _mean_colour(img, (60, 0, 96, 128))
    left = _mean_colour(img, (0, 0, 36, 128))
    assert right[0] > 150 > right[2]
    assert left[2] > 150 > left[0]


def test_an_untagged_or_upright_image_is_unchanged() -> None:
    img = decode_image(_sideways_jpeg(1), field="content")
    assert img.size == (128, 96)
    assert _mean_colour(img, (0, 0, 128, 40))[0] > 150


def test_the_transfer_of_a_sideways_photo_has_its_displayed_orientation(network: Network) -> None:
    content = pil_to_tensor(decode_image(_sideways_jpeg(6), field="content"))
    style = pil_to_tensor(Image.open(DATA / "starry_night.png"))
    out = transfer(network, content, [style], parse_params({"size": 32, "iterations": 2}))
    assert tuple(out.shape) == (3, 32, 24)


def test_the_cli_writes_a_sideways_photo_upright(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli.main import cli

    photo = tmp_path / "phone.jpg"
    photo.write_bytes(_sideways_jpeg(6))
    out = tmp_path / "out.png"
    result = CliRunner().invoke(
        cli,
        ["stylize", str(photo), str(DATA / "starry_night.png"), "-o", str(out),
         "--param", "size=32", "--param", "iterations=2", "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        assert img.size == (24, 32)


def _alpha(img: Image.Image, xy: tuple[int, int]) -> int:
    pixel = img.getpixel(xy)
    assert isinstance(pixel, tuple)
    return int(pixel[3])


def _transparent_png() -> bytes:
    """48x32 RGBA: an opaque disc-ish square in the middle, the rest fully transparent."""
    img = Image.new("RGBA", (48, 32), (0, 0, 0, 0))
    img.paste((200, 120, 40, 255), (12, 6, 36, 26))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def test_transparency_is_flattened_onto_white_unless_kept() -> None:
    flat = decode_image(_transparent_png(), field="content")
    assert flat.mode == "RGB"
    assert flat.getpixel((0, 0)) == (255, 255, 255)
    kept = decode_image(_transparent_png(), field="content", keep_alpha=True)
    assert kept.mode == "RGBA"
    assert _alpha(kept, (0, 0)) == 0 and _alpha(kept, (24, 16)) == 255
    # An opaque image stays RGB even when alpha is asked to be kept.
    opaque = (DATA / "tubingen.png").read_bytes()
    assert decode_image(opaque, field="content", keep_alpha=True).mode == "RGB"


def test_the_content_alpha_is_kept_in_the_output(network: Network) -> None:
    content = pil_to_tensor(decode_image(_transparent_png(), field="content", keep_alpha=True))
    assert content.shape[0] == 4
    style = pil_to_tensor(Image.open(DATA / "starry_night.png"))
    out = transfer(network, content, [style], parse_params({"size": 48, "iterations": 2}))
    assert tuple(out.shape) == (4, 32, 48)
    assert torch.equal(out[3], content[3])  # same size: the alpha exactly as it came
    with Image.open(io.BytesIO(encode_png(out))) as png:
        assert png.mode == "RGBA"
        assert _alpha(png, (0, 0)) == 0 and _alpha(png, (24, 16)) == 255


def test_the_alpha_is_resized_with_the_output(network: Network) -> None:
    content = pil_to_tensor(decode_image(_transparent_png(), field="content", keep_alpha=True))
    style = pil_to_tensor(Image.open(DATA / "starry_night.png"))
    out = transfer(network, content, [style], parse_params({"size": 24, "iterations": 1}))
    assert tuple(out.shape) == (4, 16, 24)
    assert float(out[3, 0, 0]) == 0.0 and float(out[3, 8, 12]) == 1.0


def test_an_rgba_style_is_flattened(network: Network) -> None:
    style = pil_to_tensor(Image.open(DATA / "starry_night.png"))
    rgba = torch.cat([style, torch.ones_like(style[:1])])
    params = parse_params({"size": 32, "iterations": 2})
    content = pil_to_tensor(Image.open(DATA / "tubingen.png"))
    assert torch.equal(
        transfer(network, content, [rgba], params), transfer(network, content, [style], params)
    )
