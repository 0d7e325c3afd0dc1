"""Held-out evaluation: the static grid against the loss function, MeanShift means by hand, correlations, CLI."""

import json
import math

import pytest
import torch
from conftest import force_heads

from autodeco.core import losses
from autodeco.core.losses import static_grid_nll
from autodeco.core.statistics import average_ranks, pearson, spearman
from autodeco.evaluation.heldout import heldout_report
from autodeco.evaluation.teacher_forcing import teacher_forced_means
from autodeco.model.modeling import AutoDecoForCausalLM


def arithmetic(count, seed):
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        a, b = (int(value) for value in torch.randint(1, 60, (2,), generator=generator))
        rows.append({"prompt": f"What is {a} + {b}?", "completion": f"{a} + {b} = {a + b}. The answer is {a + b}."})
    return rows


@pytest.fixture(scope="module")
def heldout_rows():
    return arithmetic(6, seed=99)


def test_static_grid_equals_soft_top_p_nll_at_each_constant_pair():
    torch.manual_seed(0)
    logits = torch.randn(20, 50) * 3
    labels = torch.randint(0, 50, (20,))
    temperatures, top_ps = torch.tensor([0.1, 0.7, 1.5]), torch.tensor([0.1, 0.55, 0.9, 1.0])
    grid = static_grid_nll(logits, labels, temperatures, top_ps)  # (N, G_T, G_P)
    assert grid.shape == (20, 3, 4)
    for row, temperature in enumerate(temperatures):
        for column, top_p in enumerate(top_ps):
            expected = losses.soft_top_p_nll(logits, temperature.expand(20), top_p.expand(20), labels)
            torch.testing.assert_close(grid[:, row, column].float(), expected, rtol=1e-4, atol=1e-5)


def test_heads_forced_to_a_grid_point_score_exactly_that_grid_point(tiny_chat_model_dir, tokenizer, heldout_rows):
    model = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0)
    force_heads(model, temperature=0.7, top_p=0.9)
    report = heldout_report(model, tokenizer, heldout_rows, grid_temperatures=(0.5, 0.7, 1.0), grid_top_ps=(0.8, 0.9, 1.0), batch_size=4)
    grid = report["static_grid"]
    row, column = grid["temperatures"].index(0.7), grid["top_ps"].index(0.9)
    assert report["heads"]["nll_dft"] == pytest.approx(grid["nll_dft"][row][column], rel=1e-4)
    assert report["heads"]["nll"] == pytest.approx(grid["nll"][row][column], rel=1e-4)
    assert report["heads"]["temperature_mean"] == pytest.approx(0.7, abs=1e-5) and report["heads"]["temperature_std"] < 1e-5
    # The DFT-weighted value is the top-p training loss (mean over the completion tokens), computed sequence by sequence.
    from autodeco.evaluation.teacher_forcing import as_examples

    total = count = 0.0
    for example in as_examples(tokenizer, heldout_rows):
        output = model(input_ids=example.input_ids[None])
        loss = losses.top_p_loss(output.logits, output.temperature, output.top_p, example.labels[None], reduction="sum")
        total, count = total + loss.total.item(), count + loss.count.item()
    assert report["heads"]["nll_dft"] == pytest.approx(total / count, rel=1e-5)
    assert report["num_tokens"] == count and report["num_examples"] == len(heldout_rows)
    best = report["best_static"]["nll_dft"]
    assert best["value"] == pytest.approx(min(min(values) for values in grid["nll_dft"]))


def test_teacher_forced_means_equal_a_hand_average(tiny_chat_model_dir, tokenizer, heldout_rows):
    from autodeco.evaluation.teacher_forcing import as_examples

    model = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=3)
    temperatures, top_ps = [], []
    for example in as_examples(tokenizer, heldout_rows):
        with torch.no_grad():
            output = model(input_ids=example.input_ids[None])
        predicting = example.labels[1:] != -100  # positions whose next token is a completion token
        temperatures += output.temperature[0, :-1][predicting].tolist()
        top_ps += output.top_p[0, :-1][predicting].tolist()
    mean_temperature, mean_top_p, count = teacher_forced_means(model, tokenizer, heldout_rows, batch_size=4)
    assert count == len(temperatures)
    assert mean_temperature == pytest.approx(sum(temperatures) / count, rel=1e-5)
    assert mean_top_p == pytest.approx(sum(top_ps) / count, rel=1e-5)


def test_rank_and_linear_correlations():
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert pearson(x, -x) == pytest.approx(-1.0)
    assert spearman(x, x.exp()) == pytest.approx(1.0) and pearson(x, x.exp()) < 1.0
    # Hand-computed: x = [1, 2, 3], y = [1, 3, 2] -> r = 0.5.
    assert pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0])) == pytest.approx(0.5)
    assert math.isnan(pearson(x, torch.ones(5)))


@pytest.fixture(scope="module")
def trained_heads(tiny_chat_model_dir, tmp_path_factory):
    from autodeco.training.config import TrainConfig
    from autodeco.training.recipe import train_heads

    folder = tmp_path_factory.mktemp("heldout-train")
    data = folder / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in arithmetic(24, seed=1)))
    config = TrainConfig(data=[str(data)], output_dir=str(folder / "run"), base=str(tiny_chat_model_dir), max_steps=20,
                         learning_rate=2e-3, warmup_steps=2, per_device_batch_size=4, save_every=100, log_every=10)
    return train_heads(config, progress=False).heads_dir


def test_training_lowers_the_heldout_objective_against_fresh_heads(trained_heads, tiny_chat_model_dir, tokenizer, heldout_rows):
    trained = AutoDecoForCausalLM.from_pretrained(trained_heads, base_model=str(tiny_chat_model_dir))
    fresh = AutoDecoForCausalLM.from_base(trained.llm, seed=0)
    trained_report = heldout_report(trained, tokenizer, heldout_rows, grid_temperatures=(0.5, 1.0), grid_top_ps=(0.5, 1.0))
    fresh_report = heldout_report(fresh, tokenizer, heldout_rows, grid_temperatures=(), grid_top_ps=())
    assert trained_report["heads"]["nll_dft"] < fresh_report["heads"]["nll_dft"]
    assert "static_grid" not in fresh_report
    correlation = trained_report["temperature_entropy_correlation"]
    assert -1 <= correlation["pearson"] <= 1 and -1 <= correlation["spearman"] <= 1


def test_cli_heldout_prints_the_comparison_and_writes_json(trained_heads, tiny_chat_model_dir, heldout_rows, tmp_path, capsys):
    from autodeco.cli.train import heldout

    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in heldout_rows))
    heldout(str(trained_heads), str(data), base=str(tiny_chat_model_dir), json_output=str(tmp_path / "report.json"))
    out = capsys.readouterr().out
    assert "| trained heads |" in out and "| fresh heads (seed 0) |" in out and "| best static by DFT-weighted NLL" in out
    assert "MeanShift operating point" in out and "Spearman" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["trained"]["static_grid"]["nll_dft"]) == 15 and len(report["trained"]["static_grid"]["top_ps"]) == 10
    assert report["fresh"]["num_tokens"] == report["trained"]["num_tokens"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        heldout(str(tmp_path / "missing"), str(data), base=str(tiny_chat_model_dir))
