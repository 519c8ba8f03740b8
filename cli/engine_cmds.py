"""``stylequeue stylize``: the engine alone, no queue, with the job parameters of the API."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from cli.params import parse_params as parse_param_strings
from client.text import describe_image_problem, warning_line
from shared.errors import ParameterError, StylequeueError


class _ProgressLine:
    """One line on stderr, rewritten in place on a terminal, else printed every 10%."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_decile = -1
        self.last_draw = 0.0

    def __call__(self, p: Any) -> None:
        eta = "?" if p.eta_seconds is None else f"{p.eta_seconds:.0f}s"
        line = (
            f"pass {p.scale + 1}/{p.scales}  iteration {p.iteration}/{p.iterations}  "
            f"loss {p.loss:.4g}  elapsed {p.elapsed_seconds:.0f}s  eta {eta}"
        )
        if self.tty:
            now = time.monotonic()
            if now - self.last_draw >= 0.2 or p.iteration == p.iterations:
                self.last_draw = now
                click.echo(f"\r{line}\x1b[K", nl=p.iteration == p.iterations, err=True)
            return
        decile = p.iteration * 10 // p.iterations
        if decile != self.last_decile:
            self.last_decile = decile
            click.echo(line, err=True)


def _read_image(path: Path, field: str) -> tuple[Any, Any]:
    """The image at ``path`` as a tensor, and its header (``ImageInfo``: size, alpha, as
    the API reads an upload's); a problem is one sentence naming the file."""
    from shared.errors import InvalidInputError
    from shared.images import decode_image, inspect_image
    from worker.engine import pil_to_tensor

    try:
        data = path.read_bytes()
        # A content's transparency is kept, as in a job; a style's is not.
        image = decode_image(data, field=field, keep_alpha=field == "content")
        info = inspect_image(data, field=field)
    except OSError as exc:
        raise click.ClickException(
            describe_image_problem(field, path, f"cannot read it: {exc.strerror or exc}")
        ) from None
    except InvalidInputError as exc:
        raise click.ClickException(describe_image_problem(field, path, exc.message)) from None
    return pil_to_tensor(image), info


ALPHA_SUFFIXES = (".png", ".webp", ".tif", ".tiff")  # formats that keep transparency


def _save(image: Any, output: Path) -> None:
    """Save the result; a transparent one is flattened onto white for a format without alpha."""
    if image.mode == "RGBA" and output.suffix.lower() not in ALPHA_SUFFIXES:
        from PIL import Image

        flat = Image.new("RGB", image.size, "white")
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    image.save(output, quality=92)


@click.command("stylize")
@click.argument("content", type=click.Path(path_type=Path))
@click.argument("styles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Output image (.png, .jpg).",
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="A job parameter (repeatable; `stylequeue params` lists them).",
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
)
@click.option(
    "--weights", type=click.Choice(["caffe", "torchvision"]), default="caffe", show_default=True
)
@click.option("-q", "--quiet", is_flag=True, help="No progress line.")
def stylize(
    content: Path,
    styles: tuple[Path, ...],
    output: Path,
    params: tuple[str, ...],
    device: str,
    weights: str,
    quiet: bool,
) -> None:
    """Stylize CONTENT after one or more STYLE images and write OUTPUT, on this machine.

    Parameters are those of a job (`stylequeue params` lists them), e.g.
    --param size=512 --param iterations=300 --param style_blend=[2,1].
    """
    from shared.input_warnings import input_warnings
    from shared.params import parse_params

    try:
        style_params = parse_params(parse_param_strings(params))
        if output.suffix.lower() not in {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}:
            raise ParameterError(
                "--output", f"unknown image type {output.suffix!r}; use .png or .jpg"
            )
        content_t, content_info = _read_image(content, "content")
        read = [_read_image(path, "style") for path in styles]
        style_ts, style_infos = [t for t, _ in read], [info for _, info in read]
        style_params.blend_weights(len(style_ts))  # the blend error before the model loads
        try:  # an output folder that cannot be made is said now, not after the run
            output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
        # The warnings a job of these inputs would carry, before the long part starts.
        for warning in input_warnings(content_info, style_infos, style_params):
            click.echo(warning_line(warning.message), err=True)

        import torch

        from worker.engine import default_device, get_network, tensor_to_pil, transfer

        if device == "cuda" and not torch.cuda.is_available():
            raise ParameterError("--device", "CUDA is not available on this machine")
        torch_device = default_device() if device == "auto" else torch.device(device)
        network = get_network(weights, torch_device)
        result = transfer(
            network,
            content_t,
            style_ts,
            style_params,
            on_progress=None if quiet else _ProgressLine(),
        )
        try:
            _save(tensor_to_pil(result), output)
        except OSError as exc:
            raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
    except StylequeueError as exc:
        raise click.ClickException(exc.message) from None
    except KeyboardInterrupt:
        click.echo("\ninterrupted", err=True)
        sys.exit(130)
    if not quiet:
        click.echo(f"wrote {output} ({result.shape[2]}x{result.shape[1]})", err=True)


def register(group: click.Group) -> None:
    """Add this module's commands to the ``stylequeue`` group."""
    group.add_command(stylize)
