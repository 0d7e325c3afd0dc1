"""The docstring examples of the trace and report modules (data and views) run and hold."""

import doctest
import importlib

import pytest

MODULES = [
    "autodeco.common.figures",
    "autodeco.sampling.traces",
    "autodeco.evaluation.metrics",
    "autodeco.evaluation.summary",
    "autodeco.views.colors",
    "autodeco.views.trace",
    "autodeco.views.trace_table",
    "autodeco.views.trace_html",
    "autodeco.views.trace_png",
    "autodeco.views.report_markdown",
    "autodeco.views.report_figures",
    "autodeco.views.report",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), raise_on_error=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
