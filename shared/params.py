"""The job parameters: one schema, used by the API, the worker, the engine and the CLI.

Every knob has a named default and a range, defined here once. The pydantic
model validates (and fills defaults); ``openapi.json`` is generated from it, and
``param_specs`` reads it back for ``stylequeue params``.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from shared.errors import ParameterError

# Defaults, with their units. Tuned for the classic Gatys look on the Caffe VGG19.
DEFAULT_SIZE_PX = 512
MIN_SIZE_PX = 16  # VGG19 pools four times before relu5_1: below 16 px nothing is left
MAX_SIZE_PX = 2048
DEFAULT_ITERATIONS = 270  # optimizer steps in all, summed over the coarse-to-fine passes
MAX_ITERATIONS = 5000
Optimizer = Literal["lbfgs", "adam"]
Init = Literal["content", "noise"]
DEFAULT_OPTIMIZER: Final[Optimizer] = "lbfgs"
DEFAULT_CONTENT_WEIGHT = 1.0
DEFAULT_STYLE_WEIGHT = 10.0
DEFAULT_TV_WEIGHT = 0.1
MAX_WEIGHT = 1e9
DEFAULT_STYLE_SCALE = 1.0  # style image size relative to the output size
MIN_STYLE_SCALE = 0.1
MAX_STYLE_SCALE = 4.0
DEFAULT_INIT: Final[Init] = "content"
DEFAULT_PRESERVE_COLORS = False
DEFAULT_SCALES = 3  # coarse-to-fine passes, each twice the size of the one before
MAX_SCALES = 6
DEFAULT_SEED = 0
MAX_SEED = 2**32 - 1
MAX_STYLES = 8  # style images per job


class StyleParams(BaseModel):
    """The knobs of one style transfer, as a job stores them (every default filled in)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)

    size: int = Field(
        DEFAULT_SIZE_PX,
        ge=MIN_SIZE_PX,
        le=MAX_SIZE_PX,
        description="Longest side of the output image, in pixels; the aspect ratio is the content's.",
    )
    iterations: int = Field(
        DEFAULT_ITERATIONS,
        ge=1,
        le=MAX_ITERATIONS,
        description="Optimizer iterations in all, summed over the coarse-to-fine passes.",
    )
    optimizer: Optimizer = Field(
        DEFAULT_OPTIMIZER, description="L-BFGS (sharper, the default) or Adam (less memory)."
    )
    content_weight: float = Field(
        DEFAULT_CONTENT_WEIGHT, ge=0, le=MAX_WEIGHT, description="Weight of the content loss."
    )
    style_weight: float = Field(
        DEFAULT_STYLE_WEIGHT, ge=0, le=MAX_WEIGHT, description="Weight of the style loss."
    )
    tv_weight: float = Field(
        DEFAULT_TV_WEIGHT,
        ge=0,
        le=MAX_WEIGHT,
        description="Weight of the total-variation (smoothness) loss.",
    )
    style_blend: list[float] | None = Field(
        None,
        min_length=1,
        max_length=MAX_STYLES,
        description="One non-negative weight per style image, in upload order; "
        "null means equal weights. Normalised to sum to 1.",
    )
    style_scale: float = Field(
        DEFAULT_STYLE_SCALE,
        ge=MIN_STYLE_SCALE,
        le=MAX_STYLE_SCALE,
        description="Size of the style images relative to the output: larger means larger brush strokes.",
    )
    init: Init = Field(DEFAULT_INIT, description="Start from the content image or from noise.")
    preserve_colors: bool = Field(
        DEFAULT_PRESERVE_COLORS,
        description="Transfer luminance only and keep the content image's colours.",
    )
    scales: int = Field(
        DEFAULT_SCALES,
        ge=1,
        le=MAX_SCALES,
        description="Coarse-to-fine passes; each starts from the previous result upscaled.",
    )
    seed: int = Field(
        DEFAULT_SEED,
        ge=0,
        le=MAX_SEED,
        description="Random seed (noise init); same seed, same image.",
    )

    def blend_weights(self, n_styles: int) -> list[float]:
        """The style blend as weights that sum to 1, checked against the number of styles."""
        check_style_blend(self, n_styles)
        raw = self.style_blend if self.style_blend is not None else [1.0] * n_styles
        total = sum(raw)
        return [w / total for w in raw]


def check_style_blend(params: StyleParams, n_styles: int) -> None:
    """Raise ParameterError unless ``style_blend`` fits ``n_styles`` style images."""
    if n_styles < 1:
        raise ParameterError("style", "at least one style image is required")
    if n_styles > MAX_STYLES:
        raise ParameterError("style", f"at most {_count(MAX_STYLES, 'style image')} are allowed")
    blend = params.style_blend
    if blend is None:
        return
    if len(blend) != n_styles:
        raise ParameterError(
            "style_blend",
            f"has {_count(len(blend), 'weight')} but there "
            f"{'is' if n_styles == 1 else 'are'} {_count(n_styles, 'style image')}",
        )
    if any(w < 0 for w in blend):
        raise ParameterError("style_blend", "weights must be non-negative")
    if sum(blend) <= 0:
        raise ParameterError("style_blend", "weights must not all be zero")


def parse_params(raw: Mapping[str, Any] | None) -> StyleParams:
    """Validate raw parameters (from JSON or the CLI) into StyleParams.

    The first problem becomes a ParameterError naming the field.
    """
    try:
        return StyleParams.model_validate(dict(raw or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "params"
        if err["type"] == "extra_forbidden":
            raise unknown_parameter(loc) from None
        raise ParameterError(
            loc, err["msg"], details={"input": _jsonable(err.get("input"))}
        ) from None


@dataclass(frozen=True)
class ParamSpec:
    """One job parameter as the schema defines it, for people to read (``stylequeue params``).

    ``kind`` is ``integer``, ``number``, ``boolean``, ``string`` (then ``choices``
    lists the values) or ``numbers`` (a list of ``min_items`` to ``max_items``);
    ``minimum``/``maximum`` are inclusive bounds; ``nullable`` says null is a value.
    """

    name: str
    kind: str
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    min_items: int | None = None
    max_items: int | None = None
    nullable: bool = False


def param_specs() -> list[ParamSpec]:
    """Every job parameter, in the schema's order, read from StyleParams itself.

    A field of a shape it does not know raises TypeError rather than being
    listed wrongly.
    """
    return [_spec(name, field) for name, field in StyleParams.model_fields.items()]


def _spec(name: str, field: FieldInfo) -> ParamSpec:
    annotation = field.annotation
    nullable = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(members) < len(typing.get_args(annotation))
        if len(members) != 1:
            raise TypeError(f"{name}: cannot describe the type {annotation}")
        annotation = members[0]
    bounds: dict[str, Any] = {}
    for rule in field.metadata:
        for attribute, key in (
            ("ge", "minimum"),
            ("le", "maximum"),
            ("min_length", "min_items"),
            ("max_length", "max_items"),
        ):
            if hasattr(rule, attribute):
                bounds[key] = getattr(rule, attribute)
                break
        else:
            raise TypeError(f"{name}: cannot describe the constraint {rule!r}")
    origin = typing.get_origin(annotation)
    choices = None
    if origin is Literal:
        kind, choices = "string", tuple(typing.get_args(annotation))
    elif origin is list and typing.get_args(annotation) == (float,):
        kind = "numbers"
    elif annotation is bool:
        kind = "boolean"
    elif annotation is int:
        kind = "integer"
    elif annotation is float:
        kind = "number"
    else:
        raise TypeError(f"{name}: cannot describe the type {annotation}")
    return ParamSpec(
        name=name,
        kind=kind,
        default=field.default,
        description=field.description or "",
        choices=choices,
        nullable=nullable,
        **bounds,
    )


def unknown_parameter(name: str) -> ParameterError:
    """The error for a name that is not a parameter: the closest known name, and all of them."""
    known = list(StyleParams.model_fields)
    close = difflib.get_close_matches(name.lower(), known, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}? " if close else ""
    details: dict[str, Any] = {"known": known}
    if close:
        details["suggestion"] = close[0]
    return ParameterError(
        name, f"unknown parameter; {hint}known: {', '.join(known)}", details=details
    )


def _count(n: int, noun: str) -> str:
    """``1 weight``, ``2 weights``: a count with its noun in the right number."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)
