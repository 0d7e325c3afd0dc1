"""lm-evaluation-harness's ``--model autodeco`` (autodeco.integrations.lm_eval), through lm-eval's own entry points.

Runs in .venv-lm-eval (``./bin/test-lm-eval``); skipped where lm-eval is not installed. The tasks are local JSONL
files in tests/fixtures/lm_eval (their YAMLs name the data relative to the repository root, where these tests run).
The model is a tiny random Llama with a character-level tokenizer (conftest.build_tiny_chat_model) and fresh
seeded heads; one test runs the embedded SmolLM2 with its shipped heads.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import force_heads

pytestmark = pytest.mark.lm_eval
lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed: ./bin/test-lm-eval builds .venv-lm-eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from autodeco.core.multipliers import Multipliers  # noqa: E402
from autodeco.engines.vllm import RowResult  # noqa: E402
from autodeco.integrations.lm_eval import AutoDecoLM, ModelArgsError  # noqa: E402
from autodeco.integrations.lm_eval.model import left_pad  # noqa: E402
from autodeco.model.modeling import AutoDecoForCausalLM  # noqa: E402
from autodeco.sampling.inference import load_for_generation  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "lm_eval"
GENERATE_TASK = "autodeco_tiny_generate"
UNTIL = ("e", "x")
"""The stop sequences of the generate task (tiny_generate.yaml)."""
MAX_GEN_TOKS = 12
SEED = 3


@pytest.fixture(autouse=True)
def _from_repository_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the task YAMLs name their JSONL files relative to it


@pytest.fixture(scope="module")
def heads(tmp_path_factory, tiny_chat_model_dir):
    """Fresh seeded heads on the tiny character-level Llama, saved (the base recorded by path)."""
    folder = tmp_path_factory.mktemp("lm-eval-heads") / "heads"
    AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def reference(heads):
    """The same heads loaded the ordinary way: what the lm-eval model must agree with."""
    return load_for_generation(heads)


def evaluate(model_args: dict, tasks=(GENERATE_TASK,), **kwargs) -> dict:
    manager = TaskManager(include_path=str(FIXTURES), include_defaults=False)
    return lm_eval.simple_evaluate(
        model="autodeco", model_args=model_args, tasks=list(tasks), task_manager=manager, log_samples=True, **kwargs
    )


def expected_answer(reference, prompts: list[str], seed: int, *, do_sample: bool = True):
    """Our generate() on ``prompts`` as one left-padded batch under torch.manual_seed(seed): answers and mean T, P."""
    model, tokenizer = reference.model, reference.tokenizer
    ids = [tokenizer(prompt, add_special_tokens=False).input_ids for prompt in prompts]
    input_ids, attention_mask = left_pad(ids, tokenizer.pad_token_id, "cpu")
    torch.manual_seed(seed)
    output = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, do_sample=do_sample, max_new_tokens=MAX_GEN_TOKS,
        return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id,
    )
    answers = []
    for row in range(len(prompts)):
        tokens = output.sequences[row, input_ids.shape[1] :].tolist()
        for count in range(1, len(tokens) + 1):  # the tokens up to the one that completes a stop sequence
            text = tokenizer.decode(tokens[:count], skip_special_tokens=True)
            if any(stop in text for stop in UNTIL) or tokens[count - 1] == tokenizer.eos_token_id:
                break
        cut = min([text.find(stop) for stop in UNTIL if stop in text], default=len(text))
        temperatures, top_ps = output.temperatures[row, :count], output.top_ps[row, :count]
        answers.append((text[:cut], temperatures.mean().item(), top_ps.mean().item(), count))
    return answers


def generate_requests(prompts: list[str], **gen_kwargs) -> list[Instance]:
    gen_kwargs = {"until": list(UNTIL), "max_gen_toks": MAX_GEN_TOKS, **gen_kwargs}
    return [
        Instance(request_type="generate_until", doc={}, arguments=(prompt, dict(gen_kwargs)), idx=0,
                 metadata=("test", index, 1))
        for index, prompt in enumerate(prompts)
    ]


# ----------------------------------------------------------------------------------------------- generate_until


def test_generate_until_through_simple_evaluate_gives_the_tokens_of_generate(heads, reference):
    # Batch size 1: the requests run longest prompt first (the three prompts differ in length), batch k under seed + k.
    results = evaluate({"pretrained": heads, "batch_size": 1, "seed": SEED})
    samples = sorted(results["samples"][GENERATE_TASK], key=lambda sample: -len(sample["arguments"][0][0]))
    assert len(samples) == 3
    for batch, sample in enumerate(samples):
        prompt, gen_kwargs = sample["arguments"][0]
        [(text, mean_temperature, mean_top_p, count)] = expected_answer(reference, [prompt], SEED + batch)
        assert sample["resps"] == [[text]]
        recorded = gen_kwargs["autodeco"]  # the per-sample mean T and P, in lm-eval's logged sample
        assert recorded["mean_temperature"] == [pytest.approx(mean_temperature, abs=1e-6)]
        assert recorded["mean_top_p"] == [pytest.approx(mean_top_p, abs=1e-6)]
        assert recorded["new_tokens"] == [count]
    assert any(sample["resps"][0][0] != "" for sample in samples)


def test_batched_generate_until_is_one_generate_call_on_the_batch(heads, reference):
    results = evaluate({"pretrained": heads, "batch_size": 3, "seed": SEED})
    samples = sorted(results["samples"][GENERATE_TASK], key=lambda sample: -len(sample["arguments"][0][0]))
    expected = expected_answer(reference, [sample["arguments"][0][0] for sample in samples], SEED)
    assert [sample["resps"][0][0] for sample in samples] == [answer[0] for answer in expected]
    means = [sample["arguments"][0][1]["autodeco"]["mean_temperature"][0] for sample in samples]
    assert means == pytest.approx([answer[1] for answer in expected], abs=1e-6)


def test_a_greedy_task_is_sampled_unless_follow_task_decoding(heads, reference, caplog):
    prompts = ["hello world", "abc"]  # longest first: the order the model batches them in
    greedy = expected_answer(reference, prompts, SEED, do_sample=False)
    sampled = expected_answer(reference, prompts, SEED)
    assert [answer[0] for answer in greedy] != [answer[0] for answer in sampled]

    lm = AutoDecoLM(pretrained=heads, batch_size=2, seed=SEED)
    with caplog.at_level(logging.WARNING, logger="autodeco.lm_eval"):
        first = lm.generate_until(generate_requests(prompts, do_sample=False, temperature=0.0))
        again = lm.generate_until(generate_requests(prompts, do_sample=False, temperature=0.0))
    assert first == [answer[0] for answer in sampled]  # our decoding wins by default
    assert len(again) == 2  # a second batch (drawn under seed + 1): no second notice
    notices = [record.message for record in caplog.records if "follow_task_decoding=True" in record.message]
    assert len(notices) == 1 and "do_sample=False" in notices[0]

    following = AutoDecoLM(pretrained=heads, batch_size=2, seed=SEED, follow_task_decoding=True)
    requests = generate_requests(prompts, do_sample=False, temperature=0.0)
    assert following.generate_until(requests) == [answer[0] for answer in greedy]
    assert requests[0].args[1]["autodeco"]["mean_temperature"] == [pytest.approx(greedy[0][1], abs=1e-6)]


def test_follow_task_decoding_takes_the_tasks_temperature_as_the_multiplier(heads, reference):
    lm = AutoDecoLM(pretrained=heads, batch_size=1, seed=SEED, follow_task_decoding=True, temperature=5.0)
    requests = generate_requests(["abc"], do_sample=True, temperature=0.5)
    lm.generate_until(requests)
    recorded = requests[0].args[1]["autodeco"]["mean_temperature"][0]
    model_args_only = AutoDecoLM(pretrained=heads, batch_size=1, seed=SEED, temperature=0.5)
    other = generate_requests(["abc"], do_sample=True, temperature=3.0)
    model_args_only.generate_until(other)
    assert recorded == pytest.approx(other[0].args[1]["autodeco"]["mean_temperature"][0], abs=1e-6)


def test_repeated_requests_record_one_entry_per_answer(heads):
    lm = AutoDecoLM(pretrained=heads, batch_size=2)
    [request] = generate_requests(["abc"])
    answers = lm.generate_until([request, request])
    recorded = request.args[1]["autodeco"]
    assert len(answers) == 2 and len(recorded["mean_temperature"]) == 2 and len(recorded["mean_top_p"]) == 2


# ------------------------------------------------------------------------------------------------ loglikelihood


@pytest.fixture(scope="module")
def forced_heads(tmp_path_factory, tiny_chat_model_dir):
    """Heads that predict T = 0.5 and P = 0.6 everywhere, so that the scores can be computed by hand."""
    model = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0)
    force_heads(model, temperature=0.5, top_p=0.6)
    folder = tmp_path_factory.mktemp("lm-eval-forced") / "heads"
    model.save_pretrained(folder)
    return str(folder)


def hand_scores(forced_heads, context: str, continuation: str, temperature: float, top_p: float) -> dict[str, float]:
    loaded = load_for_generation(forced_heads)
    encode = lambda text: loaded.tokenizer(text, add_special_tokens=False).input_ids  # noqa: E731
    context_ids, continuation_ids = encode(context), encode(continuation)
    with torch.no_grad():
        logits = loaded.model.llm(torch.tensor([context_ids + continuation_ids])).logits[0].double()  # (L, V)
    totals = {"base": 0.0, "hard": 0.0, "soft": 0.0}
    for offset, label in enumerate(continuation_ids):
        row = logits[len(context_ids) - 1 + offset]  # (V,) predicts this continuation token
        totals["base"] += torch.log_softmax(row, -1)[label].item()
        probs = torch.softmax(row / temperature, -1)
        order = probs.argsort(descending=True)
        kept, mass = [], 0.0
        for token in order.tolist():  # most likely first, until the kept mass reaches P
            kept.append(token)
            mass += probs[token].item()
            if mass >= top_p:
                break
        totals["hard"] += math.log(probs[label].item() / mass) if label in kept else -math.inf
        cumulative = probs[order].cumsum(0)
        soft = torch.zeros_like(probs)
        soft[order] = probs[order] * torch.exp(-30.0 * (cumulative - top_p).clamp(min=0))
        totals["soft"] += math.log(soft[label].item() / (soft.sum().item() + 1e-9))
    return totals


@pytest.mark.parametrize("mode", ["soft", "hard", "base"])
def test_loglikelihood_matches_a_hand_computation(forced_heads, mode):
    context, continuations = "2+2=", ["4", "5 ", "abc"]
    for multiplier in (1.0, 2.0):
        lm = AutoDecoLM(pretrained=forced_heads, loglikelihood=mode, temperature=multiplier, batch_size=2)
        requests = [
            Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation), idx=index)
            for index, continuation in enumerate(continuations)
        ]
        results = lm.loglikelihood(requests)
        for continuation, (log_prob, greedy) in zip(continuations, results):
            expected = hand_scores(forced_heads, context, continuation, 0.5 * multiplier, 0.6)[mode]
            if math.isinf(expected):
                assert log_prob == expected
            else:
                assert log_prob == pytest.approx(expected, abs=1e-3)
            assert isinstance(greedy, bool)


def test_multiple_choice_task_and_rolling_loglikelihood(heads):
    results = evaluate({"pretrained": heads, "loglikelihood": "base"}, tasks=["autodeco_tiny_choice"])
    assert results["results"]["autodeco_tiny_choice"]["acc,none"] in (0.0, 0.5, 1.0)
    lm = AutoDecoLM(pretrained=heads, loglikelihood="base", max_length=8)
    text = "hello world, again and again"
    [rolling] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    # lm-eval's windows of 8 positions (each token predicted once), each scored by the base alone.
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    loaded = load_for_generation(heads)
    ids = loaded.tokenizer(text, add_special_tokens=False).input_ids
    prefix = loaded.tokenizer.bos_token_id if loaded.tokenizer.bos_token_id is not None else loaded.tokenizer.eos_token_id
    total, windows = 0.0, list(map(make_disjoint_window, get_rolling_token_windows(ids, prefix, 8, 1)))
    assert len(windows) > 2
    with torch.no_grad():
        for context, continuation in windows:
            window = (context + continuation)[:-1]
            logits = loaded.model.llm(torch.tensor([window])).logits[0, -len(continuation) :].double()  # (C, V)
            total += torch.log_softmax(logits, -1).gather(-1, torch.tensor(continuation)[:, None]).sum().item()
    assert rolling == pytest.approx(total, abs=1e-3)


# ------------------------------------------------------------------------------------------ vLLM path, errors


class FakeVllmEngine:
    """Stands in for VllmEngine: records the rows asked for and answers with fixed tokens and values."""

    def __init__(self, tokenizer):
        self.tokenizer, self.max_model_len, self.rows = tokenizer, 64, []

    def generate(self, rows):
        self.rows.extend(rows)
        ids = self.tokenizer("abxcd", add_special_tokens=False).input_ids
        return [RowResult(ids, [0.5, 0.7, 0.9, 1.1, 1.3], [0.8, 0.9, 1.0, 1.0, 1.0], "length") for _ in rows]


def test_the_vllm_path_passes_plans_and_seeds_to_the_engine(heads):
    lm = AutoDecoLM(pretrained=heads, seed=SEED, top_p=0.5, follow_task_decoding=True)
    lm._engine = FakeVllmEngine(lm.tokenizer)
    requests = generate_requests(["abc", "hello"], do_sample=False)
    answers = lm.generate_until(requests)
    assert [row.seed for row in lm._engine.rows] == [SEED, SEED + 1]
    assert {(row.decoding, row.max_tokens, row.autodeco) for row in lm._engine.rows} == {
        (Multipliers(temperature=0.0, top_p=0.5), MAX_GEN_TOKS, True)
    }
    full = lm.tokenizer.decode(lm.tokenizer("abxcd", add_special_tokens=False).input_ids, skip_special_tokens=True)
    assert answers == [full[: full.index("x")]] * 2  # cut before "x"; the x's token is the last one counted
    recorded = requests[0].args[1]["autodeco"]
    assert recorded["mean_temperature"] == [pytest.approx(0.7)] and recorded["mean_top_p"] == [pytest.approx(0.9)]
    assert recorded["new_tokens"] == [3]


def test_engine_vllm_generates_like_the_hf_engine(heads):
    pytest.importorskip("vllm", reason="vLLM is not installed (./bin/test-vllm's environment has no lm-eval)")
    prompts = ["abc", "hello world"]
    hf = AutoDecoLM(pretrained=heads, follow_task_decoding=True)
    vllm_lm = AutoDecoLM(pretrained=heads, engine="vllm", follow_task_decoding=True)
    assert vllm_lm.generate_until(generate_requests(prompts, do_sample=False)) == hf.generate_until(
        generate_requests(prompts, do_sample=False)
    )


@pytest.mark.parametrize(
    "model_args, named",
    [
        ({"engine": "tgi"}, "engine=hf or engine=vllm"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"loglikelihood": "exact"}, "loglikelihood=soft"),
        ({"batch_size": 0}, "batch_size"),
        ({"follow_task_decoding": "yes"}, "follow_task_decoding=True"),
        ({"temprature": 0.5}, "unknown model_args temprature"),
        ({"pretrained": "shipped:nope"}, "pretrained='shipped:nope'"),
        ({"pretrained": "/no/such/heads"}, "pretrained='/no/such/heads'"),
    ],
)
def test_bad_model_args_are_named(model_args, named):
    with pytest.raises(ModelArgsError, match=named.replace("(", r"\(")):
        AutoDecoLM(**model_args)


def _run_cli(*arguments: str, timeout: int = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "autodeco.integrations.lm_eval", *arguments], cwd=ROOT, env=environment,
        capture_output=True, text=True, timeout=timeout,
    )


def test_the_command_line_runs_a_local_task_and_logs_mean_t_and_p(heads, tmp_path):
    result = _run_cli(
        "--model", "autodeco", "--model_args", f"pretrained={heads},batch_size=2", "--tasks", GENERATE_TASK,
        "--include_path", str(FIXTURES), "--limit", "2", "--log_samples", "--output_path", str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [samples_file] = glob.glob(str(tmp_path / "**" / f"samples_{GENERATE_TASK}_*.jsonl"), recursive=True)
    samples = [json.loads(line) for line in Path(samples_file).read_text().splitlines()]
    assert len(samples) == 2
    for sample in samples:
        recorded = sample["arguments"]["gen_args_0"]["arg_1"]["autodeco"]
        assert 0 < recorded["mean_temperature"][0] < 2 and 0 < recorded["mean_top_p"][0] <= 1


def test_the_command_line_names_a_bad_model_arg_without_a_traceback(heads):
    result = _run_cli("--model", "autodeco", "--model_args", f"pretrained={heads},engine=tgi", "--tasks", GENERATE_TASK,
                      "--include_path", str(FIXTURES), "--limit", "1")
    assert result.returncode == 2
    assert "autodeco: error: model_args engine must be one of hf, vllm, but is 'tgi'" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------- embedded model


@pytest.mark.integration
def test_the_embedded_model_answers_a_gsm8k_format_task():
    results = evaluate(
        {"pretrained": "shipped:smollm2-135m-instruct", "batch_size": 2}, tasks=["autodeco_gsm8k_local"],
        limit=2, gen_kwargs="max_gen_toks=8", apply_chat_template=True,
    )
    samples = results["samples"]["autodeco_gsm8k_local"]
    assert len(samples) == 2
    for sample in samples:
        recorded = sample["arguments"][0][1]["autodeco"]
        assert 1 <= recorded["new_tokens"][0] <= 8
        assert 0 < recorded["mean_temperature"][0] < 2 and 0 < recorded["mean_top_p"][0] <= 1
