"""Inputs the method handles badly are named in warnings, from sizes and transparency alone."""

from __future__ import annotations

import io

from PIL import Image

from shared.images import inspect_image
from shared.input_warnings import SHORT_SIDE_PX, input_warnings
from shared.params import parse_params


def _img(width: int, height: int, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (width, height))


def _codes(content: Image.Image, styles: list[Image.Image], **params: object) -> list[str]:
    return [w.code for w in input_warnings(content, styles, parse_params(params))]


def test_ordinary_inputs_give_no_warning() -> None:
    assert _codes(_img(1024, 768), [_img(800, 600)]) == []
    assert _codes(_img(512, 384), [_img(512, 320)], size=256) == []


def test_an_elongated_content_is_warned_about_with_the_size_that_would_do() -> None:
    (warning,) = input_warnings(_img(1000, 150), [_img(512, 512)], parse_params({}))
    assert warning.code == "content_short_side"
    assert "1000x150" in warning.message and "77 px" in warning.message
    assert "size 854" in warning.message  # 128 * 1000 / 150, rounded up
    # The same content at that size is fine; turned upright it is the same check.
    assert _codes(_img(1000, 150), [_img(512, 512)], size=854) == []
    assert _codes(_img(150, 1000), [_img(512, 512)]) == ["content_short_side"]
    # Just above and below the threshold.
    assert _codes(_img(512, SHORT_SIDE_PX), [_img(512, 512)]) == []
    assert _codes(_img(512, SHORT_SIDE_PX - 1), [_img(512, 512)]) == ["content_short_side"]


def test_a_content_too_elongated_for_any_size_says_crop() -> None:
    (warning,) = input_warnings(_img(4000, 100), [_img(512, 512)], parse_params({}))
    assert "crop" in warning.message and "size" not in warning.message.split(";")[1]


def test_a_small_style_is_warned_about_when_it_is_enlarged_more_than_twice() -> None:
    assert _codes(_img(512, 384), [_img(64, 64)], size=256) == ["style_upscaled"]
    assert _codes(_img(512, 384), [_img(128, 96)], size=256) == []
    # style_scale counts: the style is used at size x style_scale.
    assert _codes(_img(512, 384), [_img(128, 96)], size=256, style_scale=2) == ["style_upscaled"]
    (warning,) = input_warnings(_img(512, 384), [_img(512, 512), _img(64, 48)], parse_params({}))
    assert "style[1]" in warning.message and "8.0x" in warning.message


def test_a_small_content_is_warned_about() -> None:
    assert _codes(_img(200, 150), [_img(512, 512)]) == ["content_upscaled"]


def test_transparency_is_named() -> None:
    assert _codes(_img(512, 384, "RGBA"), [_img(512, 512)]) == ["content_alpha"]
    assert _codes(_img(512, 384), [_img(512, 512, "LA")]) == ["style_alpha"]


def test_it_works_on_what_inspect_image_found() -> None:
    out = io.BytesIO()
    _img(1000, 150, "RGBA").save(out, "PNG")
    info = inspect_image(out.getvalue(), field="content")
    assert info.has_alpha
    warnings = input_warnings(info, [info], parse_params({"size": 512}))
    assert [w.code for w in warnings] == ["content_short_side", "content_alpha", "style_alpha"]
    assert warnings[0].to_dict() == {"code": "content_short_side", "message": warnings[0].message}
