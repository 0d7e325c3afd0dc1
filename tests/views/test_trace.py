"""Tests for autodeco.sampling.traces and the trace views: the terminal table, HTML, PNG and JSON renderings."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import autodeco.views as trace_module
from autodeco.views import (
    UNTRAINED_WARNING,
    GenerationTrace,
    TokenTrace,
    format_table,
    temperature_color,
    write_html,
    write_png,
    write_trace,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_trace(count: int = 5, heads_trained: bool = True) -> GenerationTrace:
    """A trace of ``count`` tokens with temperatures spread over (0, 2)."""
    tokens = [
        TokenTrace(
            text=f" word{index}",
            temperature=0.1 + (1.8 * index) / max(count - 1, 1),
            top_p=0.5 + 0.4 * (index % 2),
        )
        for index in range(count)
    ]
    return GenerationTrace(
        prompt="Tell me a story.",
        tokens=tokens,
        model="TinyModel + test heads",
        heads_trained=heads_trained,
    )


def test_text_joins_token_pieces() -> None:
    trace = GenerationTrace(
        "p",
        [TokenTrace("Hello", 1.0, 0.9), TokenTrace(",\n", 1.0, 0.9), TokenTrace("", 1.0, 0.9)],
        "m",
        True,
    )
    assert trace.text == "Hello,\n"


def test_summary_statistics() -> None:
    trace = GenerationTrace("p", [TokenTrace("a", 0.5, 0.6), TokenTrace("b", 1.5, 1.0)], "m", True)
    summary = trace.summary()
    assert summary["count"] == 2
    assert summary["temperature"] == pytest.approx(
        {"mean": 1.0, "std": 0.5, "min": 0.5, "max": 1.5}
    )
    assert summary["top_p"] == pytest.approx({"mean": 0.8, "std": 0.2, "min": 0.6, "max": 1.0})


# Table ----------------------------------------------------------------------


def table_rows(table: str) -> list[str]:
    """The token rows of a table: lines that start with an index."""
    return [line for line in table.splitlines() if re.match(r"^\s*\d+ ", line)]


def test_table_has_one_row_per_token_with_values() -> None:
    trace = make_trace(4)
    table = format_table(trace)
    rows = table_rows(table)
    assert len(rows) == 4
    assert "' word0'" in rows[0] and "0.100" in rows[0] and "0.500" in rows[0]
    assert "1.900" in rows[3]
    assert "TinyModel + test heads" in table.splitlines()[0]
    for column in ("#", "token", "T", "top-p"):
        assert column in table
    assert "█" in rows[3]
    assert len(rows[3].split()[-1]) > len(rows[0].split()[-1])  # bar grows with T


def test_table_footer_summary() -> None:
    table = format_table(make_trace(3))
    footer = table.splitlines()[-1]
    assert footer.startswith("tokens: 3")
    assert "T: 1.000 ± 0.735" in footer
    assert "0.100-1.900" in footer


def test_table_warns_only_for_untrained_heads() -> None:
    assert UNTRAINED_WARNING in format_table(make_trace(2, heads_trained=False))
    assert "UNTRAINED" not in format_table(make_trace(2, heads_trained=True))


def test_table_truncates_to_max_rows() -> None:
    table = format_table(make_trace(10), max_rows=3)
    assert len(table_rows(table)) == 3
    assert "... 7 more tokens" in table
    assert "more tokens" not in format_table(make_trace(3), max_rows=3)
    with pytest.raises(ValueError):
        format_table(make_trace(3), max_rows=-1)


def test_table_escapes_newlines_and_truncates_long_tokens() -> None:
    trace = GenerationTrace(
        "p", [TokenTrace("end.\n", 1.0, 0.9), TokenTrace("x" * 40, 1.0, 0.9)], "m", True
    )
    table = format_table(trace)
    rows = table_rows(table)
    assert len(rows) == 2
    assert r"'end.\n'" in rows[0]
    assert "…" in rows[1] and "x" * 40 not in rows[1]
    assert len(table.splitlines()) == 6  # model, prompt, header, 2 rows, footer


# HTML -----------------------------------------------------------------------


def test_html_escapes_tokens_and_shows_values(tmp_path) -> None:
    trace = GenerationTrace(
        prompt="<script>alert(1)</script>",
        tokens=[TokenTrace("<b>", 0.2, 0.7), TokenTrace(' & "q"\n', 1.8, 0.95)],
        model="M <1>",
        heads_trained=True,
    )
    page = write_html(trace, tmp_path / "trace.html").read_text(encoding="utf-8")
    assert "&lt;b&gt;" in page and "<b>" not in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "&amp; &quot;q&quot;" in page
    assert "M &lt;1&gt;" in page
    assert "white-space: pre-wrap" in page
    assert 'title="token 0: T = 0.200, top-p = 0.700"' in page
    assert page.count('class="token"') == 2
    assert "UNTRAINED" not in page


def test_html_colours_differ_for_low_and_high_temperature(tmp_path) -> None:
    trace = GenerationTrace(
        "p", [TokenTrace("cold", 0.2, 0.9), TokenTrace("hot", 1.8, 0.9)], "m", False
    )
    page = write_html(trace, tmp_path / "trace.html").read_text(encoding="utf-8")
    colours = re.findall(r'class="token" style="background-color: (#[0-9a-f]{6})', page)
    assert colours == [temperature_color(0.2), temperature_color(1.8)]
    assert colours[0] != colours[1]
    assert UNTRAINED_WARNING in page
    assert "http://" not in page and "https://" not in page and "<script" not in page


def rgb(colour: str) -> tuple[int, int, int]:
    """'#rrggbb' as a tuple of ints."""
    return tuple(int(colour[index : index + 2], 16) for index in (1, 3, 5))


def test_temperature_color_scale() -> None:
    assert temperature_color(1.0) == "#ffffff"
    cold_red, _, cold_blue = rgb(temperature_color(0.2))
    hot_red, _, hot_blue = rgb(temperature_color(1.8))
    assert cold_blue > cold_red and hot_red > hot_blue
    assert temperature_color(-5) == temperature_color(0.0)
    assert temperature_color(9) == temperature_color(2.0)
    assert temperature_color(float("nan")) not in (temperature_color(0.0), temperature_color(2.0))


def test_html_write_is_atomic_and_leaves_no_temporary_files(tmp_path) -> None:
    target = tmp_path / "trace.html"
    target.write_text("old", encoding="utf-8")
    write_html(make_trace(3), target)
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [path.name for path in tmp_path.iterdir()] == ["trace.html"]


# PNG ------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 60, 500])
def test_png_is_valid_and_readable(tmp_path, count) -> None:
    import matplotlib.image

    trace = make_trace(count, heads_trained=False)
    target = write_png(trace, tmp_path / "trace.png")
    assert target.read_bytes()[:8] == PNG_MAGIC
    pixels = matplotlib.image.imread(target)
    height, width = pixels.shape[:2]
    assert width >= 800 and height >= 600
    assert pixels.std() > 0.05  # not a blank image
    assert [path.name for path in tmp_path.iterdir()] == ["trace.png"]


def test_png_handles_awkward_tokens(tmp_path) -> None:
    odd = ["$x$", "\n\n", "", "\t", " 你好", "é", "x" * 250, " <b>", "\x00"]
    trace = GenerationTrace(
        "a $ prompt\nwith lines", [TokenTrace(text, 1.0, 0.9) for text in odd], "m", True
    )
    assert write_png(trace, tmp_path / "odd.png").read_bytes()[:8] == PNG_MAGIC


def run_with_trace_module(code: str) -> str:
    """Runs ``code`` in a fresh Python with the views package loaded as ``trace_module``.

    ``autodeco/views/__init__.py`` is loaded from its file, so the check covers
    the trace data and views alone and skips the package's heavy imports.
    """
    loader = (
        "import importlib.util, sys; "
        "spec = importlib.util.spec_from_file_location("
        f"'trace_module', {trace_module.__file__!r}); "
        "trace_module = importlib.util.module_from_spec(spec); "
        "sys.modules['trace_module'] = trace_module; "
        "spec.loader.exec_module(trace_module)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", loader + code], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_png_does_not_change_the_matplotlib_backend(tmp_path) -> None:
    code = (
        "import matplotlib; matplotlib.use('svg')\n"
        "token = trace_module.TokenTrace('a', 1.0, 0.9)\n"
        "trace = trace_module.GenerationTrace('p', [token], 'm', True)\n"
        f"trace_module.write_png(trace, {str(tmp_path / 'b.png')!r})\n"
        "print(matplotlib.get_backend())"
    )
    assert run_with_trace_module(code) == "svg"
    assert (tmp_path / "b.png").read_bytes()[:8] == PNG_MAGIC


def test_import_does_not_load_matplotlib() -> None:
    assert run_with_trace_module("print('matplotlib' in sys.modules)") == "False"


# Dispatch and JSON -----------------------------------------------------------


def test_write_trace_dispatches_on_suffix(tmp_path) -> None:
    trace = make_trace(3)
    assert (
        write_trace(trace, tmp_path / "a.HTML")
        .read_text(encoding="utf-8")
        .startswith("<!DOCTYPE html>")
    )
    assert (write_trace(trace, tmp_path / "a.png")).read_bytes()[:8] == PNG_MAGIC
    assert (
        json.loads(write_trace(trace, str(tmp_path / "a.json")).read_text(encoding="utf-8"))[
            "model"
        ]
        == trace.model
    )


@pytest.mark.parametrize("name", ["trace.txt", "trace", "trace.svg"])
def test_write_trace_rejects_unknown_suffix(tmp_path, name) -> None:
    with pytest.raises(ValueError, match=r"suffix.*supported: \.html, \.json, \.png"):
        write_trace(make_trace(2), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_json_round_trip(tmp_path) -> None:
    trace = GenerationTrace(
        prompt='Prompt with "quotes" and\nnewline',
        tokens=[
            TokenTrace(" héllo", 0.25, 0.5),
            TokenTrace("\n", 1.75, 0.125),
            TokenTrace("", 1.0, 0.9),
        ],
        model="SmolLM2-135M-Instruct + untrained heads",
        heads_trained=False,
    )
    target = write_trace(trace, tmp_path / "trace.json")
    loaded = GenerationTrace.from_dict(json.loads(target.read_text(encoding="utf-8")))
    assert loaded == trace
    assert GenerationTrace.from_dict(trace.to_dict()) == trace


# Empty trace -------------------------------------------------------------------


def test_empty_trace_everywhere(tmp_path) -> None:
    trace = GenerationTrace(prompt="p", tokens=[], model="m", heads_trained=False)
    assert trace.text == ""
    summary = trace.summary()
    assert summary["count"] == 0
    assert all(value is None for key in ("temperature", "top_p") for value in summary[key].values())
    table = format_table(trace)
    assert "(no tokens)" in table and table.splitlines()[-1] == "tokens: 0"
    assert "(no tokens generated)" in write_html(trace, tmp_path / "e.html").read_text(
        encoding="utf-8"
    )
    assert write_png(trace, tmp_path / "e.png").read_bytes()[:8] == PNG_MAGIC
    assert (
        GenerationTrace.from_dict(
            json.loads(write_trace(trace, tmp_path / "e.json").read_text(encoding="utf-8"))
        )
        == trace
    )
