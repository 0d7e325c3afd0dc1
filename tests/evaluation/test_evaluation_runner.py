"""``autodeco eval`` end to end on a tiny random model: every method, resume, bad input."""

import json
from collections import Counter

import pytest

from autodeco.evaluation.methods import PAPER_METHODS
from autodeco.evaluation.records import read_records
from autodeco.evaluation.config import EvalConfig, oracle_grid
from autodeco.evaluation.runner import SAMPLES_FILE, TUNING_FILE, evaluate
from autodeco.views.report import write_report


def config_for(model_dir, **overrides):
    temperatures, top_ps = oracle_grid(0.5)
    settings = dict(
        dataset="arithmetic", limit=4, base=str(model_dir), seeds=(0, 1), samples_per_seed=2, max_new_tokens=6,
        batch_size=3, oracle_temperatures=temperatures, oracle_top_ps=top_ps, meanshift=(0.8, 0.9),
        methods=PAPER_METHODS,
    )
    return EvalConfig(**{**settings, **overrides})


def test_every_method_is_run_on_the_same_problems_with_the_same_budget(tiny_chat_model_dir, tmp_path):
    result = evaluate(config_for(tiny_chat_model_dir), tmp_path, progress=False, write_report=write_report)
    records = read_records(tmp_path / SAMPLES_FILE)
    per_setting = Counter(record.setting for record in records)
    # greedy: 1 per problem; every sampled setting: 4 problems x 2 seeds x 2 samples. Default (T=1, P=1) is
    # also the oracle's grid point, generated once; grid T in {0.5, 1.0}, then P in {0.5, 1.0} at the best T.
    assert per_setting["greedy"] == 4
    for setting in ("autodeco", "T=0.80,P=0.90", "T=1.00,P=1.00", "T=0.50,P=1.00"):
        assert per_setting[setting] == 16, setting
    methods = {method["name"]: method for method in result.summary["methods"]}
    best_temperature = methods["oracle"]["temperature"]
    assert per_setting[f"T={best_temperature:.2f},P=0.50"] == 16
    assert {record.problem_id for record in records} == {f"arithmetic/test/{index}" for index in range(4)}
    autodeco = [record for record in records if record.setting == "autodeco"]
    assert all(len(record.temperatures) == record.num_tokens == len(record.tokens) for record in autodeco)
    assert set(methods) >= {"greedy", "default", "autodeco", "meanshift", "oracle"}
    for name in ("summary.json", "report.md", "methods.png", "oracle.png", "pass_at_k.png", "trace.png"):
        assert (tmp_path / name).exists(), name
    assert result.summary["throughput"]["samples_per_second"] > 0


def test_a_killed_evaluation_resumes_where_it_stopped(tiny_chat_model_dir, tmp_path):
    config = config_for(tiny_chat_model_dir, methods=("greedy", "autodeco", "default"))
    evaluate(config, tmp_path, progress=False)
    complete = (tmp_path / SAMPLES_FILE).read_text().splitlines(keepends=True)
    # Keep the first 20 lines and half of the 21st, as a kill in the middle of a write would.
    (tmp_path / SAMPLES_FILE).write_text("".join(complete[:20]) + complete[20][: len(complete[20]) // 2])
    with pytest.warns(UserWarning):
        resumed = evaluate(config, tmp_path, progress=False)
    # The 16 lost answers, plus the kept answers of groups the kill left incomplete (regenerated whole).
    assert len(complete) - 20 <= resumed.samples_generated < len(complete) - 20 + config.samples_per_seed
    records = read_records(tmp_path / SAMPLES_FILE)
    assert sorted(record.key for record in records) == sorted(
        tuple(json.loads(line)[name] for name in ("problem_id", "setting", "seed", "sample")) for line in complete
    )
    assert evaluate(config, tmp_path, progress=False).samples_generated == 0


def test_a_resume_folder_from_another_configuration_is_refused(tiny_chat_model_dir, tmp_path):
    evaluate(config_for(tiny_chat_model_dir, methods=("greedy",)), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"max_new_tokens: 6 there, 7 now.*--overwrite"):
        evaluate(config_for(tiny_chat_model_dir, methods=("greedy",), max_new_tokens=7), tmp_path, progress=False)


def test_meanshift_uses_the_heads_teacher_forced_means_on_heldout_trajectories(tiny_chat_model_dir, tmp_path):
    from autodeco.evaluation.teacher_forcing import teacher_forced_means
    from autodeco.sampling.inference import load_for_generation

    heldout = tmp_path / "heldout.jsonl"
    rows = [{"prompt": "What is 2 + 2?", "completion": "4"}, {"prompt": "What is 3 * 3?", "completion": "It is 9."}]
    heldout.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = config_for(tiny_chat_model_dir, methods=("meanshift",), meanshift=None, meanshift_data=str(heldout))
    result = evaluate(config, tmp_path / "eval", progress=False)
    loaded = load_for_generation(None, str(tiny_chat_model_dir))
    temperature, top_p, _ = teacher_forced_means(loaded.model, loaded.tokenizer, rows)
    methods = {method["name"]: method for method in result.summary["methods"]}
    assert methods["meanshift"]["setting"] == f"T={temperature:.2f},P={top_p:.2f}"


def test_bad_input_is_named(tiny_chat_model_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown method.*'beam'.*valid: greedy, default, autodeco, meanshift, oracle, "
                                         "edt, .*top-p-head, shuffle, bin-shuffle"):
        config_for(tiny_chat_model_dir, methods=("greedy", "beam"))
    with pytest.raises(ValueError, match="gsm8k"):
        evaluate(config_for(tiny_chat_model_dir, dataset="no-such-dataset"), tmp_path, progress=False)
    with pytest.raises(ValueError, match="MeanShift needs"):
        evaluate(config_for(tiny_chat_model_dir, methods=("meanshift",), meanshift=None), tmp_path / "m", progress=False)


def test_heads_made_for_another_base_are_refused(tiny_chat_model_dir, tmp_path, tiny_causal_lm):
    from autodeco.model.modeling import AutoDecoForCausalLM

    other = AutoDecoForCausalLM.from_base(tiny_causal_lm("qwen2"), seed=0)  # hidden size 32, vocabulary 128
    other.save_pretrained(tmp_path / "heads")
    with pytest.raises(ValueError, match="vocab"):
        evaluate(config_for(tiny_chat_model_dir, heads=str(tmp_path / "heads")), tmp_path / "eval", progress=False)


CRITIQUE_METHODS = ("autodeco", "meanshift", "edt", "entropy-shift", "min-p", "top-n-sigma", "temperature-head",
                    "top-p-head", "shuffle", "bin-shuffle")


def test_critique_methods_are_tuned_on_the_training_split_and_run_on_the_test_problems(tiny_chat_model_dir, tmp_path,
                                                                                          capsys):
    from autodeco.evaluation.methods import tuning_candidates

    config = config_for(tiny_chat_model_dir, methods=CRITIQUE_METHODS, seeds=(0,), tune_problems=2)
    result = evaluate(config, tmp_path, progress=True)
    printed = capsys.readouterr().out
    assert "plan: tune:" in printed and "plan: controls:" in printed and "estimate: at most about" in printed
    tuning = read_records(tmp_path / TUNING_FILE)
    assert {record.problem_id.split("/")[1] for record in tuning} == {"train"}
    records = read_records(tmp_path / SAMPLES_FILE)
    assert {record.problem_id.split("/")[1] for record in records} == {"test"}
    methods = {method["name"]: method for method in result.summary["methods"]}
    assert set(methods) == set(CRITIQUE_METHODS)
    for name in ("edt", "min-p", "top-n-sigma", "entropy-shift"):
        chosen = result.summary["tuning"][name]
        grid = [setting.key for setting in tuning_candidates(name, chosen.get("mean_normalized_entropy"))]
        assert chosen["tuned"] and chosen["setting"] in grid and methods[name]["setting"] == chosen["setting"]
        assert set(chosen["scores"]) == set(grid)
    assert 0 < result.summary["tuning"]["entropy-shift"]["mean_normalized_entropy"] <= 1
    per_setting = Counter(record.setting for record in records)
    for name in CRITIQUE_METHODS:
        assert per_setting[methods[name]["setting"]] == 4 * 2, name  # 4 problems x 1 seed x 2 samples
    autodeco = [record for record in records if record.setting == "autodeco"]
    assert all(len(record.entropies) == len(record.temperatures) for record in autodeco)
    values = [value for record in autodeco for value in record.temperatures]
    for name in ("shuffle", "bin-shuffle"):
        shuffled = [record for record in records if record.setting == methods[name]["setting"]]
        assert all(min(values) - 1e-6 <= record.temperature_mean <= max(values) + 1e-6 for record in shuffled)
    assert all(record.finished is not None for record in records)
    assert not (tmp_path / "report.md").exists()  # no write_report given: nothing rendered
    resumed = evaluate(config, tmp_path, progress=False)  # the same tuning choices, so nothing to generate
    assert resumed.samples_generated == 0 and resumed.summary["tuning"] == result.summary["tuning"]


def test_untuned_heuristics_and_strict_scoring(tiny_chat_model_dir, tmp_path):
    from autodeco.evaluation.methods import UNTUNED_DEFAULTS, heuristic_setting

    config = config_for(tiny_chat_model_dir, methods=("greedy", "eta", "confidence-gated"), seeds=(0,),
                        tune_problems=0, scoring="strict")
    result = evaluate(config, tmp_path, progress=False, write_report=write_report)
    assert not (tmp_path / TUNING_FILE).exists()
    assert result.summary["scoring"] == "strict"
    for name in ("eta", "confidence-gated"):
        assert result.summary["tuning"][name] == {
            "setting": heuristic_setting(name, UNTUNED_DEFAULTS[name]).key, "tuned": False,
            "note": "untuned default parameters (--tune-problems 0)",
        }
    report = (tmp_path / "report.md").read_text()
    assert "Pass@1 (%, strict)" in report and "cut off (%)" in report and "untuned default parameters" in report


def test_tuning_on_the_evaluated_problems_is_refused(tiny_chat_model_dir, tmp_path):
    config = config_for(tiny_chat_model_dir, methods=("edt",), tune_split="test", tune_problems=2)
    with pytest.raises(ValueError, match="also evaluated.*tuning on the test set.*--tune-problems 0"):
        evaluate(config, tmp_path, progress=False)
    assert not (tmp_path / SAMPLES_FILE).exists()


def test_shuffle_controls_need_autodeco(tiny_chat_model_dir):
    with pytest.raises(ValueError, match="shuffle and bin-shuffle draw AutoDeco's per-token values.*add autodeco"):
        config_for(tiny_chat_model_dir, methods=("shuffle", "bin-shuffle"))


def test_entropy_shift_is_centred_on_the_other_heuristics_tokens_only(tiny_causal_lm):
    import math
    from types import SimpleNamespace

    from autodeco.evaluation.records import SampleRecord
    from autodeco.evaluation.runner import _mean_normalized_entropy

    llm = tiny_causal_lm("llama")
    loaded = SimpleNamespace(model=SimpleNamespace(llm=llm))
    vocab = llm.get_output_embeddings().weight.shape[0]
    edt = SampleRecord("p", "edt:T0=0.7,N=0.8,theta=1,P=1", 0, 0, "", None, False, 2, entropies=[1.0, 2.0])
    shifted = SampleRecord("p", "entropy-shift:T=0.7,delta=1,mean_H=0.5,T_min=0.05,T_max=1.5,P=1", 0, 0, "", None,
                           False, 1, entropies=[4.0])
    expected = round(1.5 / math.log(vocab), 4)
    # A resumed run must find the same mean (and so the same grid) after entropy-shift's own samples were written.
    assert _mean_normalized_entropy([edt], loaded) == _mean_normalized_entropy([edt, shifted], loaded) == expected
    assert _mean_normalized_entropy([shifted], loaded) is None


def test_tuning_problems_that_repeat_an_evaluated_question_in_other_case_or_spacing_are_refused(tmp_path):
    from autodeco.evaluation.runner import _tuning_problems
    from autodeco.problems import load_problems

    test = tmp_path / "test.jsonl"
    test.write_text('{"question": "What is 2 + 2?", "answer": "4"}\n')
    train = tmp_path / "train.jsonl"
    train.write_text('{"question": "Q?", "answer": "1"}\n{"question": "  WHAT is 2 +\\n 2?", "answer": "4"}\n')
    config = EvalConfig(dataset=str(test), methods=("min-p",), tune_dataset=str(train), tune_problems=2)
    with pytest.raises(ValueError, match="1 of the 2 tuning problems .* are also evaluated"):
        _tuning_problems(config, load_problems(str(test)))
