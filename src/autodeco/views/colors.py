"""The temperature colour scale shared by every trace view.

One diverging scale everywhere: blue for low T, white at T = 1.0, red for high T, over (0, 2).

Example:
    >>> temperature_color(1.0)
    '#ffffff'
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["TEMPERATURE_ANCHORS", "TEMPERATURE_RANGE", "matplotlib_colormap", "temperature_color",
           "temperature_rgb", "text_color_on"]

TEMPERATURE_RANGE = (0.0, 2.0)
"""The range of temperatures that the colour scale covers."""

# Diverging scale (ColorBrewer RdBu, with pure white at T = 1.0): (T, RGB).
TEMPERATURE_ANCHORS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (33, 102, 172)),
    (0.5, (103, 169, 207)),
    (1.0, (255, 255, 255)),
    (1.5, (239, 138, 98)),
    (2.0, (178, 24, 43)),
)
_MISSING_COLOR = (190, 190, 190)
_DARK_TEXT = "#1a1a1a"
_LIGHT_TEXT = "#ffffff"


def temperature_rgb(temperature: float) -> tuple[int, int, int]:
    """RGB (0-255) of ``temperature`` on the diverging scale, clamped to (0, 2)."""
    if not math.isfinite(temperature):
        return _MISSING_COLOR
    low, high = TEMPERATURE_RANGE
    value = min(max(temperature, low), high)
    for (start, start_rgb), (end, end_rgb) in zip(
        TEMPERATURE_ANCHORS, TEMPERATURE_ANCHORS[1:], strict=False
    ):
        if value <= end:
            fraction = (value - start) / (end - start)
            return tuple(
                round(a + (b - a) * fraction) for a, b in zip(start_rgb, end_rgb, strict=True)
            )
    return TEMPERATURE_ANCHORS[-1][1]


def temperature_color(temperature: float) -> str:
    """Hex colour of a temperature: blue (low) - white (1.0) - red (high).

    Temperatures outside (0, 2) are clamped; NaN maps to grey.

    Example:
        >>> temperature_color(1.0)
        '#ffffff'
        >>> temperature_color(0.0), temperature_color(2.0)
        ('#2166ac', '#b2182b')
    """
    return "#{:02x}{:02x}{:02x}".format(*temperature_rgb(temperature))


def text_color_on(rgb: tuple[int, int, int]) -> str:
    """Dark or light text colour, whichever reads better on ``rgb``."""
    red, green, blue = (channel / 255 for channel in rgb)
    luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    return _LIGHT_TEXT if luminance < 0.45 else _DARK_TEXT


def matplotlib_colormap() -> Any:
    """The temperature scale as a matplotlib colormap over (0, 1)."""
    from matplotlib.colors import LinearSegmentedColormap

    low, high = TEMPERATURE_RANGE
    stops = [
        ((value - low) / (high - low), tuple(channel / 255 for channel in rgb))
        for value, rgb in TEMPERATURE_ANCHORS
    ]
    return LinearSegmentedColormap.from_list("autodeco_temperature", stops)
