"""Decoding settings (autodeco.sampling.settings): method kinds, parameters, keys and their validation."""

from __future__ import annotations

import math

import pytest

from autodeco.evaluation.records import SampleRecord
from autodeco.sampling.settings import (
    KINDS,
    METHOD_KINDS,
    PARAMETERS,
    DecodingSetting,
    parse_static_setting,
)

EXAMPLES = {
    "edt": DecodingSetting.edt(0.7, 0.8, 1.0),
    "entropy-shift": DecodingSetting.entropy_shift(0.8, 0.5, 0.31, 0.1, 1.5, top_p=0.95),
    "confidence-gated": DecodingSetting.confidence_gated(0.9, 1.2, 0.95),
    "min-p": DecodingSetting.min_p(1.0, 0.1),
    "eta": DecodingSetting.eta(0.9, 3e-4),
    "top-n-sigma": DecodingSetting.top_n_sigma(1.5, 1.0),
    "temperature-head": DecodingSetting.temperature_head(0.907),
    "top-p-head": DecodingSetting.top_p_head(0.798),
    "shuffle": DecodingSetting.shuffle(),
    "bin-shuffle": DecodingSetting.bin_shuffle(),
}

EXPECTED_KEYS = {
    "edt": "edt:T0=0.7,N=0.8,theta=1,P=1",
    "entropy-shift": "entropy-shift:T=0.8,delta=0.5,mean_H=0.31,T_min=0.1,T_max=1.5,P=0.95",
    "confidence-gated": "confidence-gated:threshold=0.9,T=1.2,P=0.95",
    "min-p": "min-p:T=1,min_p=0.1",
    "eta": "eta:T=0.9,epsilon=0.0003",
    "top-n-sigma": "top-n-sigma:T=1.5,n=1",
    "temperature-head": "temperature-head:P=0.907",
    "top-p-head": "top-p-head:T=0.798",
    "shuffle": "shuffle",
    "bin-shuffle": "bin-shuffle:bins=5",
}


def test_every_method_kind_has_an_example_and_parameter_specs():
    assert set(EXAMPLES) == set(METHOD_KINDS)
    assert set(PARAMETERS) == set(KINDS)
    assert KINDS[:3] == ("greedy", "static", "autodeco")


@pytest.mark.parametrize("kind", METHOD_KINDS)
def test_method_keys_round_trip(kind):
    setting = EXAMPLES[kind]
    assert setting.kind == kind
    assert setting.key == EXPECTED_KEYS[kind]
    assert DecodingSetting.from_key(setting.key) == setting
    assert DecodingSetting.from_key(setting.key).key == setting.key
    assert parse_static_setting(setting.key) is None


def test_existing_keys_are_unchanged():
    assert DecodingSetting.greedy().key == "greedy"
    assert DecodingSetting.autodeco().key == "autodeco"
    assert DecodingSetting.static(0.7, 1).key == "T=0.70,P=1.00"
    assert parse_static_setting("T=0.70,P=1.00") == (0.7, 1.0)
    assert DecodingSetting.static(0.7, 1).params == ()


@pytest.mark.parametrize(
    "value", [0.123456789, 1234.5678, 3.3e-7, 0.1 + 0.2, 2.0 / 3.0, 17.0, 9.99951, -0.0]
)
def test_parameters_are_rounded_once_to_four_significant_digits(value):
    setting = DecodingSetting.entropy_shift(0.8, value, 0.3, 0.1, 2.0)
    delta = setting.param("delta")
    assert delta == float(f"{value:.4g}")
    again = DecodingSetting.from_key(setting.key)
    assert again == setting and again.key == setting.key and again.param("delta") == delta
    assert str(delta) != "-0.0"


def test_from_key_accepts_free_spelling_and_defaults_but_records_need_the_canonical_key():
    setting = DecodingSetting.from_key("edt:T0=0.70,N=0.80,theta=1.0")
    assert setting == DecodingSetting.edt(0.7, 0.8, 1.0, 1.0)
    assert DecodingSetting.from_key("bin-shuffle") == DecodingSetting.bin_shuffle(5)
    with pytest.raises(ValueError, match=r"canonically: write it as 'edt:T0=0.7,N=0.8,theta=1,P=1'"):
        parse_static_setting("edt:T0=0.70,N=0.80,theta=1.0")
    with pytest.raises(ValueError, match="canonically"):
        parse_static_setting("bin-shuffle")


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: DecodingSetting.edt(0.7, 1.5, 1.0), r"edt: N must be in \(0, 1\), got 1.5"),
        (lambda: DecodingSetting.edt(0.7, 0.99999, 1.0), r"N must be in \(0, 1\), got 0.99999 \(rounded to 1\)"),
        (lambda: DecodingSetting.edt(0.0, 0.5, 1.0), r"edt: T0 must be in \(0, inf\), got 0.0"),
        (lambda: DecodingSetting.edt(0.7, 0.5, -1.0), r"edt: theta must be in \(0, inf\), got -1.0"),
        (lambda: DecodingSetting.edt(0.7, 0.5, 1.0, 1.2), r"edt: P must be in \(0, 1\], got 1.2"),
        (lambda: DecodingSetting.entropy_shift(0.8, math.nan, 0.3, 0.1, 2), r"delta must be in \(-inf, inf\), got nan"),
        (lambda: DecodingSetting.entropy_shift(0.8, 1, 1.3, 0.1, 2), r"mean_H must be in \[0, 1\], got 1.3"),
        (lambda: DecodingSetting.entropy_shift(0.8, 1, 0.3, 1, 0.5), "T_max must be >= T_min, got T_min=1, T_max=0.5"),
        (lambda: DecodingSetting.confidence_gated(1.0, 1.0), r"threshold must be in \(0, 1\), got 1.0"),
        (lambda: DecodingSetting.min_p(1.0, 0.0), r"min-p: min_p must be in \(0, 1\], got 0.0"),
        (lambda: DecodingSetting.eta(1.0, 1.0), r"eta: epsilon must be in \(0, 1\), got 1.0"),
        (lambda: DecodingSetting.top_n_sigma(1.0, 0.0), r"top-n-sigma: n must be in \(0, inf\), got 0.0"),
        (lambda: DecodingSetting.top_n_sigma(math.inf, 1.0), r"T must be in \(0, inf\), got inf"),
        (lambda: DecodingSetting.temperature_head(0.0), r"P must be in \(0, 1\], got 0.0"),
        (lambda: DecodingSetting.top_p_head(-0.5), r"T must be in \(0, inf\), got -0.5"),
        (lambda: DecodingSetting.bin_shuffle(2.5), r"bins must be an integer in \[1, inf\), got 2.5"),
        (lambda: DecodingSetting.bin_shuffle(0), r"bins must be an integer in \[1, inf\), got 0"),
        (lambda: DecodingSetting("edt", params=(("T0", 1.0),)), r"parameters must be \['T0', 'N', 'theta', 'P'\]"),
        (lambda: DecodingSetting("static", 0.7, 1.0, (("T", 1.0),)), "parameters must be none"),
        (lambda: DecodingSetting("beam"), "decoding kind must be one of"),
    ],
)
def test_out_of_range_parameters_are_refused_with_value_and_range(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "key,message",
    [
        ("edt:N=0.5", r"edt needs \['T0', 'theta'\]"),
        ("edt:T0=hot,N=0.5,theta=1", "T0 must be a number, got 'hot'"),
        ("min-p:min_p=0.1,T=1", r"takes the parameters \['T', 'min_p'\] in this order"),
        ("min-p:T=1,min_p=0.1,k=3", "takes the parameters"),
        ("min-p:T=1,T=2", "not one new <name>=<value> pair"),
        ("min-p:T", "not one new <name>=<value> pair"),
        ("shuffle:", "empty parameter list"),
        ("eta:T=1,epsilon=inf", r"epsilon must be in \(0, 1\), got inf"),
        ("top-n-sigma:T=0,n=1", r"T must be in \(0, inf\), got 0.0"),
        ("T=0.7,P=1", "unknown setting"),
        ("beam", "methods: edt, entropy-shift"),
    ],
)
def test_bad_keys_are_refused(key, message):
    with pytest.raises(ValueError, match=message):
        DecodingSetting.from_key(key)
    with pytest.raises(ValueError):
        parse_static_setting(key)


def test_param_accessor():
    setting = DecodingSetting.edt(0.7, 0.8, 1.0, 0.9)
    assert [setting.param(name) for name in ("T0", "N", "theta", "P")] == [0.7, 0.8, 1.0, 0.9]
    with pytest.raises(KeyError, match=r"edt has no parameter 'T'; its parameters: \['T0', 'N', 'theta', 'P'\]"):
        setting.param("T")


def test_parameter_specs_describe_their_ranges():
    for kind, specs in PARAMETERS.items():
        for spec in specs:
            assert spec.meaning and spec.allowed.startswith(("(", "["))
            if spec.default is not None:
                assert spec.contains(spec.default), (kind, spec.name)
    assert [spec.name for spec in PARAMETERS["entropy-shift"]] == ["T", "delta", "mean_H", "T_min", "T_max", "P"]


@pytest.mark.parametrize("kind", METHOD_KINDS)
def test_sample_records_accept_method_keys(kind):
    record = SampleRecord("p-1", EXAMPLES[kind].key, seed=0, sample=0, text="x", extracted=None, correct=False,
                          num_tokens=1)
    assert record.setting == EXPECTED_KEYS[kind]
    if kind == "shuffle":
        return
    spelled_freely = EXPECTED_KEYS[kind].replace("=", "=0", 1)  # "edt:T0=00.7,...": the same setting
    assert DecodingSetting.from_key(spelled_freely) == EXAMPLES[kind]
    with pytest.raises(ValueError, match="canonically"):
        SampleRecord("p-1", spelled_freely, seed=0, sample=0, text="x", extracted=None, correct=False, num_tokens=1)
