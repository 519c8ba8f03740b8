"""``stylequeue stylize`` on the real engine: through click's CliRunner, and as a program."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from cli.main import cli
from cli.params import parse_params

DATA = Path(__file__).resolve().parents[1] / "data"
STYLEQUEUE = str(Path(sys.executable).with_name("stylequeue"))


def _program(*args: str) -> subprocess.CompletedProcess[str]:
    """``stylequeue ARGS...`` run as a program, as a user runs it."""
    return subprocess.run([STYLEQUEUE, *args], capture_output=True, text=True, timeout=120)


def _stylize(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["stylize", *args])
    return result.exit_code, result.output


def test_stylize_writes_the_image(tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    code, output = _stylize(
        str(DATA / "tubingen.png"), str(DATA / "starry_night.png"), str(DATA / "shipwreck.png"),
        "-o", str(out), "--param", "size=40", "--param", "iterations=3",
        "--param", "style_blend=[2, 1]", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, output
    assert "iteration 3/3" in output
    with Image.open(out) as img:
        assert img.size == (40, 30)


def test_bad_parameter_exits_non_zero_naming_it(tmp_path: Path) -> None:
    for param, name in [
        ("size=0", "size"),
        ("style_weight=-1", "style_weight"),
        ("nope=1", "nope"),
    ]:
        code, output = _stylize(
            str(DATA / "tubingen.png"), str(DATA / "starry_night.png"), "-o", str(tmp_path / "o.png"),
            "--param", param,
        )  # fmt: skip
        assert code != 0
        assert f"{name}:" in output


def test_an_unknown_parameter_names_the_closest_one(tmp_path: Path) -> None:
    done = _program(
        "stylize", str(DATA / "tubingen.png"), str(DATA / "starry_night.png"),
        "-o", str(tmp_path / "o.png"), "--param", "style_wieght=3",
    )  # fmt: skip
    assert done.returncode == 1 and not (tmp_path / "o.png").exists()
    assert done.stderr.strip().splitlines() == [
        "Error: style_wieght: unknown parameter; did you mean style_weight? known: size, "
        "iterations, optimizer, content_weight, style_weight, tv_weight, style_blend, "
        "style_scale, init, preserve_colors, scales, seed"
    ]


def test_blend_mismatch_exits_before_any_work(tmp_path: Path) -> None:
    code, output = _stylize(
        str(DATA / "tubingen.png"), str(DATA / "starry_night.png"), "-o", str(tmp_path / "o.png"),
        "--param", "style_blend=[1, 2]",
    )  # fmt: skip
    assert code != 0
    assert "style_blend:" in output


def test_a_blend_for_one_style_image_counts_it_in_the_singular(tmp_path: Path) -> None:
    done = _program(
        "stylize", str(DATA / "tubingen.png"), str(DATA / "starry_night.png"),
        "-o", str(tmp_path / "o.png"), "--param", "style_blend=[1, 2]",
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == "Error: style_blend: has 2 weights but there is 1 style image"


# How a Python exception's class shows in text: what a message for people must not have.
EXCEPTION_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception)\b")


def _one_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1 and done.stdout == "", done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert not EXCEPTION_NAME.search(lines[0]), lines[0]
    return lines[0]


def test_an_image_that_does_not_decode_is_a_sentence_naming_the_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    cut = tmp_path / "cut.png"
    cut.write_bytes((DATA / "tubingen.png").read_bytes()[:200])
    for content, style, named in [
        (text, DATA / "starry_night.png", f"content image {text}: "),
        (DATA / "tubingen.png", cut, f"style image {cut}: "),
    ]:
        line = _one_error(
            _program("stylize", str(content), str(style), "-o", str(tmp_path / "o.png"))
        )
        assert line.startswith(f"Error: {named}") and len(line) > len(f"Error: {named}") + 10
    assert not (tmp_path / "o.png").exists()


def test_a_file_that_cannot_be_read_is_a_sentence_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jpg"
    line = _one_error(
        _program("stylize", str(DATA / "tubingen.png"), str(missing), "-o", str(tmp_path / "o.png"))
    )
    assert line == f"Error: style image {missing}: cannot read it: No such file or directory"
    line = _one_error(
        _program("stylize", str(tmp_path), str(DATA / "starry_night.png"), "-o", "o.png")
    )
    assert line == f"Error: content image {tmp_path}: cannot read it: Is a directory"


def test_an_output_that_cannot_be_written_is_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    out = tmp_path / "taken" / "o.png"
    code, output = _stylize(
        str(DATA / "tubingen.png"), str(DATA / "starry_night.png"), "-o", str(out),
        "--param", "size=24", "--param", "iterations=1", "--param", "scales=1",
        "--device", "cpu", "-q",
    )  # fmt: skip
    assert code == 1 and output.startswith(f"Error: cannot write {out}: "), output
    assert "Traceback" not in output and len(output.strip().splitlines()) == 1


def test_param_values_parse_as_json_else_strings() -> None:
    assert parse_params(
        ("size=64", "optimizer=adam", "style_blend=[1,2]", "preserve_colors=true")
    ) == {
        "size": 64,
        "optimizer": "adam",
        "style_blend": [1, 2],
        "preserve_colors": True,
    }


def test_a_transparent_content_keeps_its_alpha_and_a_jpeg_output_is_flattened(
    tmp_path: Path,
) -> None:
    photo = Image.open(DATA / "tubingen.png").convert("RGBA").resize((32, 24))
    alpha = Image.new("L", photo.size, 255)
    alpha.paste(0, (0, 0, 16, 24))  # the left half transparent
    photo.putalpha(alpha)
    content = tmp_path / "cutout.png"
    photo.save(content)
    args = [str(content), str(DATA / "starry_night.png"), "--param", "size=32"]
    args += ["--param", "iterations=2", "--device", "cpu", "--quiet"]
    code, output = _stylize(*args, "-o", str(tmp_path / "out.png"))
    assert code == 0, output
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "RGBA" and out.size == (32, 24)
        assert out.getpixel((4, 12))[3] == 0 and out.getpixel((28, 12))[3] == 255
    code, output = _stylize(*args, "-o", str(tmp_path / "out.jpg"))
    assert code == 0, output
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.mode == "RGB"
        assert min(out.getpixel((4, 12))) > 240  # white where it was transparent (JPEG rounds)


def test_stylize_prints_the_warnings_a_job_of_its_inputs_would_carry(tmp_path: Path) -> None:
    content, style = tmp_path / "cutout.png", tmp_path / "tiny-style.png"
    Image.new("RGBA", (64, 64), (90, 140, 200, 128)).save(content)
    Image.new("RGB", (32, 32), (200, 60, 20)).save(style)
    done = _program(
        "stylize", str(content), str(style), "-o", str(tmp_path / "out.png"),
        "--param", "size=128", "--param", "iterations=1", "--param", "scales=1",
        "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, done.stderr
    assert warnings[0].startswith("warning: the content has transparent areas")
    assert warnings[1].startswith("warning: style[0] is 32x32 and is enlarged 4.0x to 128 px")
    ordinary = _program(
        "stylize", str(DATA / "astronaut.png"), str(DATA / "astronaut.png"),
        "-o", str(tmp_path / "plain.png"), "--param", "size=128", "--param", "iterations=1",
        "--param", "scales=1", "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert ordinary.returncode == 0, ordinary.stderr
    assert "warning" not in ordinary.stderr
