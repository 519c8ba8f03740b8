"""Output-size arithmetic that the API checks before accepting a job (no torch here).

The engine applies the same rule when it plans its passes
(``worker.engine.schedule``); checking it at submit turns a job that would
fail on a worker into an immediate 400 naming ``size``.
"""

from __future__ import annotations

from shared.errors import ParameterError

# VGG19 pools four times before relu5_1, so each side of the output needs at least 16 px.
MIN_OUTPUT_SIDE_PX = 16


def output_shape(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) of the output: the longer side is ``size``, the aspect ratio kept."""
    if height >= width:
        return max(1, round(width * size / height)), size
    return size, max(1, round(height * size / width))


def batch_shape(width: int, height: int, size: int) -> str:
    """The output's "WxH": what the jobs a worker runs together share (their images
    stacked into one tensor at every pass)."""
    out_w, out_h = output_shape(width, height, size)
    return f"{out_w}x{out_h}"


def check_output_size(width: int, height: int, size: int) -> None:
    """Raise ParameterError on ``size`` if the output's shorter side would be under 16 px."""
    out_w, out_h = output_shape(width, height, size)
    if min(out_w, out_h) < MIN_OUTPUT_SIDE_PX:
        raise ParameterError(
            "size",
            f"the content is {width}x{height}: at size {size} the output would be "
            f"{out_w}x{out_h}, and each side needs at least {MIN_OUTPUT_SIDE_PX} px",
            details={"content_width": width, "content_height": height},
        )
