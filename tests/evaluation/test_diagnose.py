"""The diagnosis: per-token values by hand on a tiny model, the summary on hand-built tokens, the report, the CLI."""

import json
import math

import pytest
import torch
from conftest import force_heads

from autodeco.cli import main
from autodeco.core.decoding import warp_logits
from autodeco.evaluation.diagnose import TOKEN_COLUMNS, diagnose, diagnose_tokens, summarise_diagnosis
from autodeco.evaluation.teacher_forcing import as_examples
from autodeco.model.modeling import AutoDecoForCausalLM


def arithmetic(count, seed):
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        a, b = (int(value) for value in torch.randint(1, 60, (2,), generator=generator))
        rows.append({"prompt": f"What is {a} + {b}?", "completion": f"{a} + {b} = {a + b}."})
    return rows


@pytest.fixture(scope="module")
def rows():
    return arithmetic(5, seed=7)


def hand_tokens(model, tokenizer, rows):
    """Per-token logits, labels, T, P and trajectory index, one trajectory at a time (no batching)."""
    collected = {"logits": [], "labels": [], "temperature": [], "top_p": [], "example": []}
    for index, example in enumerate(as_examples(tokenizer, rows)):
        with torch.no_grad():
            output = model(input_ids=example.input_ids[None])
        predicting = example.labels[1:] != -100
        collected["logits"].append(output.logits[0, :-1][predicting])
        collected["labels"].append(example.labels[1:][predicting])
        collected["temperature"].append(output.temperature[0, :-1][predicting])
        collected["top_p"].append(output.top_p[0, :-1][predicting])
        collected["example"].append(torch.full((int(predicting.sum()),), index))
    return {name: torch.cat(values) for name, values in collected.items()}


@pytest.mark.parametrize("cache_bytes", [0, 1 << 30])  # pass 2 runs the model again, or reuses pass 1's logits
def test_per_token_values_equal_a_hand_computation(tiny_chat_model_dir, tokenizer, rows, cache_bytes):
    model = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=5)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    tokens = diagnose_tokens(model, tokenizer, rows, batch_size=2, cache_bytes=cache_bytes)
    assert len(calls) == (6 if cache_bytes == 0 else 3)  # 5 trajectories in batches of 2: 3 forward passes each
    hand = hand_tokens(model, tokenizer, rows)
    assert tokens["example"].tolist() == hand["example"].tolist()
    inverse = 1.0 / hand["temperature"].double()
    mean_inverse = float(inverse.mean())
    assert float(tokens["mean_inverse_temperature"]) == pytest.approx(mean_inverse, rel=1e-12)
    assert float(tokens["mean_temperature"]) == pytest.approx(float(hand["temperature"].double().mean()), rel=1e-12)
    logits = hand["logits"].double()
    log_probs = lambda beta: torch.log_softmax(beta[:, None] * logits, -1).gather(-1, hand["labels"][:, None])[:, 0]  # noqa: E731
    expected = log_probs(inverse) - log_probs(torch.full_like(inverse, mean_inverse))
    torch.testing.assert_close(tokens["measured_gain"], expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(tokens["delta"], inverse - mean_inverse, rtol=1e-4, atol=1e-6)
    probabilities = torch.softmax(logits, -1)
    torch.testing.assert_close(tokens["top_probability"], probabilities.amax(-1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(tokens["entropy"], -(probabilities * probabilities.log()).sum(-1), rtol=1e-4, atol=1e-5)
    nucleus = torch.isfinite(warp_logits(hand["logits"], hand["temperature"], hand["top_p"])).sum(-1).double()
    assert tokens["nucleus_size"].tolist() == nucleus.tolist()
    assert 1 <= tokens["nucleus_size"].min() and tokens["nucleus_size"].max() <= logits.shape[1]


def test_constant_temperature_heads_gain_exactly_nothing(tiny_chat_model_dir, tokenizer, rows):
    model = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0)
    force_heads(model, temperature=0.7, top_p=0.9)
    report = diagnose(model, tokenizer, rows, batch_size=3, resamples=50)
    test = report["inverse_temperature_test"]
    assert test["static_temperature"] == pytest.approx(0.7, abs=1e-6)
    for name in ("predicted_gain", "measured_gain", "measured_gain_vs_mean_temperature"):
        assert test[name]["mean"] == 0.0 and test[name]["interval"] == [0.0, 0.0]
    assert test["verdict"] == "nothing" and "does nothing measurable" in test["verdict_text"]
    assert test["sign_agreement"]["counted"] == 0 and test["sign_agreement"]["share"] is None
    assert report["correlations"]["temperature_entropy"]["pearson"] is None  # T is constant
    assert report["num_trajectories"] == len(rows)
    assert report["per_token"]["temperature"]["std"] < 1e-6


def hand_built_tokens(aligned: bool):
    """Six trajectories of four tokens with known g; T sharpens (or flattens) where g > 0."""
    slope = torch.tensor([1.0, -1.0, 2.0, -0.5] * 6, dtype=torch.float64)
    beta = 1.0 + 0.2 * (slope.sign() if aligned else -slope.sign())  # mean 1: delta = +-0.2
    variance = torch.full_like(slope, 0.5)
    delta = beta - 1.0
    predicted = slope * delta - 0.5 * variance * delta**2
    return {
        "example": torch.arange(6).repeat_interleave(4),
        "temperature": 1.0 / beta, "top_p": torch.full_like(slope, 0.9), "entropy": torch.linspace(0.1, 2.0, 24).double(),
        "top_probability": torch.linspace(0.9, 0.2, 24).double(), "nucleus_size": torch.full_like(slope, 3.0),
        "delta": delta, "slope": slope, "variance": variance, "predicted_gain": predicted, "measured_gain": predicted,
        "measured_gain_vs_mean_temperature": predicted,
        "mean_inverse_temperature": torch.tensor(1.0, dtype=torch.float64),
        "mean_temperature": (1.0 / beta).mean(),
    }


def test_summary_of_aligned_and_opposed_variation():
    helps = summarise_diagnosis(hand_built_tokens(aligned=True), resamples=200)["inverse_temperature_test"]
    # Per token: |g| * 0.2 - 0.5 * 0.5 * 0.04 = 0.2 |g| - 0.01; mean |g| = 1.125 -> 0.215 per token, 0.86 per trajectory.
    assert helps["measured_gain"]["mean"] == pytest.approx(0.215, abs=1e-12)
    assert helps["measured_gain"]["interval"] == pytest.approx([0.215, 0.215], abs=1e-12)  # identical trajectories
    assert helps["measured_gain"]["per_trajectory_sum"]["mean"] == pytest.approx(0.86, abs=1e-12)
    assert helps["first_order_term"] == pytest.approx(0.225, abs=1e-12)
    assert helps["second_order_term"] == pytest.approx(-0.01, abs=1e-12)
    assert helps["sign_agreement"]["share"] == 1.0 and helps["sign_agreement"]["counted"] == 24
    assert helps["verdict"] == "helps" and "helps" in helps["verdict_text"]
    assert "100.0 %" in helps["alignment_text"] and "more often" in helps["alignment_text"]
    hurts = summarise_diagnosis(hand_built_tokens(aligned=False), resamples=200)["inverse_temperature_test"]
    assert hurts["measured_gain"]["mean"] == pytest.approx(-0.235, abs=1e-12)
    assert hurts["sign_agreement"]["share"] == 0.0 and hurts["verdict"] == "hurts"
    # Ranks: delta is two tie groups (centred +-6), g four (centred -9, -3, 3, 9): r = -864 / sqrt(864 * 1080).
    assert hurts["delta_slope_correlation"]["spearman"] == pytest.approx(-math.sqrt(0.8))


def test_report_files_and_quantiles(tmp_path):
    from autodeco.views.diagnose_report import write_diagnose_report

    tokens = hand_built_tokens(aligned=True)
    summary = summarise_diagnosis(tokens, resamples=50)
    # Quantiles interpolate between order statistics: T takes 1/1.2 on 12 tokens and 1/0.8 on 12.
    assert summary["per_token"]["temperature"]["quantiles"]["0.5"] == pytest.approx((1 / 1.2 + 1 / 0.8) / 2)
    paths = write_diagnose_report(tmp_path / "out", summary, tokens)
    for name in ("delta_vs_slope.png", "gains.png", "temperature.png"):
        assert paths[name].read_bytes()[:4] == b"\x89PNG"
    stored = json.loads(paths["diagnose.json"].read_text())
    assert stored["inverse_temperature_test"]["verdict"] == "helps"
    lines = paths["tokens.jsonl"].read_text().splitlines()
    assert len(lines) == 24 and set(json.loads(lines[0])) == {"trajectory", *TOKEN_COLUMNS} - {"example"}
    markdown = paths["diagnose.md"].read_text()
    assert "![" in markdown and "helps" in markdown and "top-p is left out" in markdown


@pytest.fixture(scope="module")
def heads_dir(tiny_chat_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("diagnose-heads") / "heads"
    assert main(["init", str(folder), "--base", str(tiny_chat_model_dir)]) == 0
    return folder


def test_cli_writes_the_report(heads_dir, rows, tmp_path, capsys):
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "diagnose"
    status = main(["diagnose", str(heads_dir), str(data), "--output", str(out), "--limit", "3", "--batch-size", "2",
                   "--resamples", "50"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "## Verdict" in captured.out and "token-level temperature variation" in captured.out
    stored = json.loads((out / "diagnose.json").read_text())
    assert stored["num_trajectories"] == 3 and stored["run"]["limit"] == 3
    assert math.isfinite(stored["inverse_temperature_test"]["measured_gain"]["mean"])
    for name in ("diagnose.md", "tokens.jsonl", "delta_vs_slope.png", "gains.png", "temperature.png"):
        assert (out / name).is_file(), name


def one_line_error(capsys, argv, *phrases):
    status = main([str(word) for word in argv])
    err = capsys.readouterr().err
    assert status == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for phrase in phrases:
        assert phrase in err, err


def test_cli_bad_inputs(heads_dir, rows, tmp_path, capsys):
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "out"
    one_line_error(capsys, ["diagnose", tmp_path / "missing", data, "--output", out], "does not exist", "autodeco init")
    not_jsonl = tmp_path / "notes.txt"
    not_jsonl.write_text("these are notes\n")
    one_line_error(capsys, ["diagnose", heads_dir, not_jsonl, "--output", out], "notes.txt:1", "not valid JSON")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    one_line_error(capsys, ["diagnose", heads_dir, empty, "--output", out], "holds no trajectory", "autodeco sample")
    one_line_error(capsys, ["diagnose", heads_dir, data, "--output", out, "--limit", "0"], "--limit must be >= 1")
    assert not out.exists()  # refused before anything is written


def test_cli_refuses_a_folder_in_use(heads_dir, rows, tmp_path, capsys):
    from autodeco.common.runlock import run_lock

    data = tmp_path / "heldout.jsonl"
    data.write_text(json.dumps(rows[0]) + "\n")
    with run_lock(tmp_path / "busy", "diagnose"):
        one_line_error(capsys, ["diagnose", heads_dir, data, "--output", tmp_path / "busy"], "already in use")
