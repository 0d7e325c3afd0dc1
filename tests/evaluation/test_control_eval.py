"""control-eval per question source, answer mode and phrasing family, with the neutral and accuracy controls."""

import json
import math

import pytest

from autodeco.data.phrasings import ControlPhrasings, PhrasingFamily
from autodeco.evaluation import control
from autodeco.evaluation.control import ControlEvalConfig, eval_families, progress_key, question_commands, run_conditions
from autodeco.evaluation.control_summary import goal_check, summarise


def family(name, kind, split="eval", phrasings=("x",), placement="after", language="en"):
    phrasings = tuple(f"{name} {text}" for text in phrasings)  # no text shared between families
    return PhrasingFamily(name, kind, split, placement, language, "test", phrasings)


def phrasings(*extra):
    base = (family("low-train", "low", "train"), family("high-train", "high", "train"),
            family("low-a", "low"), family("high-a", "high"))
    return ControlPhrasings(base + extra, "hand-made", "0" * 64)


# ------------------------------------------------------------------------------------ commands per question


def test_question_i_gets_family_i_mod_F_and_the_families_phrasings_in_turn():
    families = [family("a", "low", phrasings=("1", "2")), family("b", "low", phrasings=("1",)),
                family("c", "low", phrasings=("1", "2", "3"), placement="system")]
    commands = question_commands(families, 10)
    assert [command.family for command in commands] == ["a", "b", "c"] * 3 + ["a"]
    # within a family: phrasing (i // F) mod len(family): a gets 1, 2, 1, 2; c gets 1, 2, 3
    assert [command.text for command in commands if command.family == "a"] == ["a 1", "a 2", "a 1", "a 2"]
    assert [command.text for command in commands if command.family == "c"] == ["c 1", "c 2", "c 3"]
    assert {command.placement for command in commands if command.family == "c"} == {"system"}
    assert {command.kind for command in commands} == {"low"}
    counts = [sum(command.family == name for command in commands) for name in "abc"]
    assert counts == [4, 3, 3]  # every family about N / F questions


def test_a_neutral_condition_runs_only_when_the_file_has_neutral_eval_families():
    without = eval_families(phrasings(family("neutral-train", "neutral", "train")))
    assert set(without) == {"low", "high"} and run_conditions(list(without)) == ("none", "low", "high")
    found = eval_families(phrasings(family("low-b", "low", placement="before"), family("note", "neutral")))
    assert [item.name for item in found["low"]] == ["low-a", "low-b"]  # eval families only, in file order
    assert run_conditions(list(found)) == ("none", "low", "high", "neutral")


# -------------------------------------------------------------------------------------------------- config


def test_one_dataset_or_several_never_both():
    assert ControlEvalConfig().datasets == ["arithmetic"]
    single = ControlEvalConfig(dataset="gsm8k")
    assert single.datasets == ["gsm8k"] and single.dataset is None  # one spelling: resumes --datasets gsm8k
    assert ControlEvalConfig(datasets=["gsm8k"]) == single
    with pytest.raises(ValueError, match=r"dataset and datasets are both given .*give one source with --dataset"):
        ControlEvalConfig(dataset="gsm8k", datasets=["arithmetic"])
    with pytest.raises(ValueError, match=r"datasets must name each source once, got \['a', 'a'\]"):
        ControlEvalConfig(datasets=["a", "a"])
    with pytest.raises(ValueError, match=r"datasets must name at least one"):
        ControlEvalConfig(datasets=[])


def test_answer_lengths_are_per_source_unless_given():
    config = ControlEvalConfig(datasets=["arithmetic", "gsm8k"])
    assert config.max_new_tokens is None
    assert (config.max_new_tokens_for("arithmetic"), config.max_new_tokens_for("gsm8k")) == (32, 1024)
    fixed = ControlEvalConfig(datasets=["arithmetic", "gsm8k"], max_new_tokens=24)
    assert (fixed.max_new_tokens_for("arithmetic"), fixed.max_new_tokens_for("gsm8k")) == (24, 24)


@pytest.mark.parametrize("overrides, message", [
    ({"modes": []}, r"modes must be one or both of sampled, greedy"),
    ({"modes": ["beam"]}, r"modes must be one or both of sampled, greedy .*'beam'"),
    ({"modes": ["greedy", "greedy"]}, r"modes must be one or both"),
    ({"modes": ["greedy"], "compare_heads": "other"}, r"compare_heads compares sampled accuracy: add sampled"),
    ({"max_new_tokens": 0}, r"max_new_tokens must be an integer >= 1, got 0"),
])
def test_bad_modes_and_lengths_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        ControlEvalConfig(**overrides)


def test_the_flags_come_from_the_config():
    from autodeco.cli import build_parser

    parsed = vars(build_parser().parse_args(
        ["control-eval", "--datasets", "arithmetic", "gsm8k", "--modes", "greedy", "--max-new-tokens", "24"]))
    assert parsed["datasets"] == ["arithmetic", "gsm8k"] and parsed["modes"] == ["greedy"]
    assert parsed["max_new_tokens"] == 24


# ------------------------------------------------------------------------------------------------- summary


def values(temperature, top_p, accuracy=1.0, diversity=True):
    entry = {"temperature": temperature, "top_p": top_p, "accuracy": accuracy, "tokens": 3}
    if diversity:
        entry.update(distinct_answers=1, distinct_ngrams=temperature)
    return entry


def command(kind, name):
    return {"text": f"{name} text", "family": name, "placement": "after"}


def question(source, index, plain, low, high, neutral=None, greedy=True, compare=None):
    """One question whose sampled and greedy values are the given (T, P) pairs per prompt."""
    prompts = {"none": plain, "low": low, "high": high, **({"neutral": neutral} if neutral else {})}
    families = {"low": f"low-{'ab'[index % 2]}", "high": "high-a", **({"neutral": "note"} if neutral else {})}
    heads = {"sampled": {name: values(*pair) for name, pair in prompts.items()}}
    if greedy:
        heads["greedy"] = {name: values(*pair, diversity=False) for name, pair in prompts.items()}
    found = {"source": source, "id": str(index), "commands": {kind: command(kind, name) for kind, name in families.items()},
             "heads": heads}
    if compare is not None:
        found["compare"] = {"sampled": {"none": values(0.7, 0.9, accuracy=compare)}}
    return found


def test_summary_per_source_mode_and_family():
    questions = [
        # arithmetic: every low command lowers both; question 3's high command leaves P where it was
        *[question("arithmetic", i, (0.7, 0.9), (0.6, 0.8), (0.8, 0.9 if i == 3 else 0.95), neutral=(0.7, 0.9))
          for i in range(4)],
        # gsm8k: family low-b (odd questions) raises T instead of lowering it
        *[question("gsm8k", i, (0.7, 0.9), (0.8 if i % 2 else 0.6, 0.8), (0.8, 0.95), neutral=(0.7 + (-1) ** i * 0.01, 0.9))
          for i in range(4)],
    ]
    summary = summarise(questions, resamples=200)
    assert summary["sources"] == ["arithmetic", "gsm8k"] and summary["num_questions"] == 8
    assert "directions" not in summary  # the single-source keys only for one source
    arithmetic = summary["by_source"]["arithmetic"]
    assert list(arithmetic["modes"]) == ["sampled", "greedy"] and arithmetic["num_questions"] == 4
    sampled = arithmetic["modes"]["sampled"]
    assert sampled["directions"]["low"]["temperature"]["moved"] == 1.0
    assert sampled["directions"]["high"]["top_p"]["moved"] == 0.75
    assert sampled["directions"]["high"]["top_p"]["unchanged"] == 0.25
    assert sampled["baseline"] == pytest.approx({"temperature": 0.7, "top_p": 0.9})
    neutral = sampled["neutral"]["temperature"]
    assert neutral["difference"]["mean"] == pytest.approx(0.0) and neutral["contains_zero"]
    # the greedy mode has no diversity measures (one answer)
    greedy = arithmetic["modes"]["greedy"]
    assert "distinct_ngrams" not in greedy["conditions"]["low"] and "distinct_ngrams" in sampled["conditions"]["low"]
    # per family, in order of first use: gsm8k's low-b never lowered T, low-a always did
    families = {entry["family"]: entry for entry in summary["by_source"]["gsm8k"]["modes"]["greedy"]["families"]}
    assert list(families) == ["low-a", "low-b", "high-a", "note"]  # by kind, each in the order of first use
    assert (families["low-a"]["temperature"]["moved"], families["low-b"]["temperature"]["moved"]) == (1.0, 0.0)
    assert families["low-b"]["temperature"]["against"] == 1.0 and families["low-b"]["questions"] == 2
    assert families["low-b"]["top_p"]["moved"] == 1.0 and families["low-b"]["temperature"]["change"] == pytest.approx(0.1)
    assert families["note"]["temperature"] == {"change": pytest.approx(0.0), "raised": 0.5, "lowered": 0.5}
    assert summary["by_source"]["gsm8k"]["modes"]["greedy"]["directions"]["low"]["temperature"]["moved"] == 0.5
    json.dumps(summary)  # JSON-ready


def test_one_source_keeps_the_paper_table_keys():
    questions = [question("arithmetic", i, (0.7, 0.9), (0.6, 0.8), (0.8, 0.95)) for i in range(3)]
    summary = summarise(questions, resamples=50)
    assert summary["directions"] is summary["by_source"]["arithmetic"]["modes"]["sampled"]["directions"]
    assert summary["baseline"] == pytest.approx({"temperature": 0.7, "top_p": 0.9})
    assert summary["by_source"]["arithmetic"]["modes"]["sampled"]["neutral"] is None


def test_a_neutral_sentence_that_moves_T_fails_its_goal():
    questions = [question("a", i, (0.7, 0.9), (0.6, 0.8), (0.8, 0.95), neutral=(0.75 + 0.01 * i, 0.9)) for i in range(6)]
    summary = summarise(questions, resamples=200)
    neutral = summary["by_source"]["a"]["modes"]["sampled"]["neutral"]
    assert neutral["temperature"]["difference"]["low"] > 0 and not neutral["temperature"]["contains_zero"]
    assert neutral["top_p"]["contains_zero"] and neutral["temperature"]["raised"] == 1.0
    criteria = {(item["mode"], item["kind"], item["measure"]): item for item in summary["goal"]["criteria"]}
    assert not criteria["sampled", "neutral", "temperature"]["met"]
    assert criteria["sampled", "neutral", "top_p"]["met"] and criteria["greedy", "neutral", "top_p"]["met"]
    assert not summary["goal"]["met"]


def _comparison(mean, low, high):
    return {"difference": {"mean": mean, "low": low, "high": high}}


def _measured(moved=1.0, neutral_interval=(-0.01, 0.01), diversity=True):
    directions = {}
    for kind, sign in (("low", -1), ("high", 1)):
        directions[kind] = {measure: {"moved": moved} for measure in ("temperature", "top_p")}
        if diversity:  # low lowers the distinct-n ratio, high raises it
            directions[kind]["distinct_ngrams"] = {"difference": {"mean": 0.15 * sign, "low": min(0.1 * sign, 0.2 * sign),
                                                                  "high": max(0.1 * sign, 0.2 * sign)}}
    low, high = neutral_interval
    neutral = {measure: {"difference": {"mean": (low + high) / 2, "low": low, "high": high},
                         "contains_zero": low <= 0 <= high} for measure in ("temperature", "top_p")}
    return {"directions": directions, "neutral": neutral}


@pytest.mark.parametrize("difference, met", [
    ((0.0, -0.02, 0.02), True),
    ((0.01, -0.01, 0.03), True),  # exactly 1 point, interval holds 0
    ((-0.02, -0.05, 0.01), False),  # interval holds 0 but 2 points lower
    ((0.005, 0.001, 0.009), False),  # within a point, but the interval excludes 0
])
def test_accuracy_must_stay_within_a_point_of_the_compared_heads(difference, met):
    by_source = {"gsm8k": {"modes": {"sampled": _measured()}, "comparison": _comparison(*difference)}}
    goal = goal_check(by_source)
    accuracy = [item for item in goal["criteria"] if item["measure"] == "accuracy"]
    assert len(accuracy) == 1 and accuracy[0]["met"] is met and accuracy[0]["value"] == difference[0]


def test_goal_criteria_per_source_mode_kind_and_measure():
    by_source = {
        "arithmetic": {"modes": {"sampled": _measured(), "greedy": _measured(0.96, diversity=False)},
                       "comparison": _comparison(0.0, -0.01, 0.01)},
        "gsm8k": {"modes": {"sampled": _measured(), "greedy": _measured(0.9, diversity=False)}, "comparison": None},
    }
    by_source["gsm8k"]["modes"]["greedy"]["neutral"] = None
    goal = goal_check(by_source)
    moved = [item for item in goal["criteria"] if item["measure"] in ("temperature", "top_p") and item["kind"] != "neutral"]
    assert len(moved) == 2 * 2 * 2 * 2  # source x mode x kind x measure
    failed = {(item["source"], item["mode"]) for item in goal["criteria"] if not item["met"]}
    assert failed == {("gsm8k", "greedy")} and not goal["met"]
    assert sum(item["measure"] == "distinct_ngrams" for item in goal["criteria"]) == 2 * 2  # sampled mode only
    assert sum(item["kind"] == "neutral" for item in goal["criteria"]) == 3 * 2  # gsm8k greedy: not judged
    assert any("gsm8k, greedy: neutral" in reason for reason in goal["not_judged"])
    assert any("gsm8k: accuracy" in reason for reason in goal["not_judged"])
    assert "arithmetic, greedy: low command moved temperature" in goal["criteria"][8]["criterion"]


# ------------------------------------------------------------------------------------------------ resume


def test_progress_is_keyed_by_source_batch_run_mode_and_prompt(tmp_path):
    settings = {"datasets": ["arithmetic", "gsm8k"], "modes": ["sampled", "greedy"], "phrasings_fingerprint": "a",
                "resamples": 10}
    ids = {"arithmetic": ["1", "2"], "gsm8k": ["g1"]}
    record = control._Progress(tmp_path, settings, ids, overwrite=False)
    record.add(("gsm8k", 0, "heads", "greedy", "low"), [{"temperature": 0.5}])
    record.add(("gsm8k", 0, "heads", "sampled", "low"), [{"temperature": 0.6}])
    reopened = control._Progress(tmp_path, {**settings, "resamples": 99}, ids, overwrite=False)  # the bootstrap may change
    assert reopened.get(("gsm8k", 0, "heads", "greedy", "low"), 1) == [{"temperature": 0.5}]
    assert reopened.get(("gsm8k", 0, "heads", "sampled", "low"), 1) == [{"temperature": 0.6}]
    assert reopened.get(("arithmetic", 0, "heads", "greedy", "low"), 1) is None
    assert reopened.get(("gsm8k", 0, "heads", "greedy", "low"), 2) is None  # a partial batch is answered again
    line = json.loads((tmp_path / control.PROGRESS_FILE).read_text().splitlines()[0])
    assert progress_key(line) == ("gsm8k", 0, "heads", "greedy", "low")
    for changed, name in (({**settings, "modes": ["sampled"]}, "modes"),
                          ({**settings, "datasets": ["gsm8k"]}, "datasets"),
                          ({**settings, "phrasings_fingerprint": "b"}, "phrasings_fingerprint")):
        with pytest.raises(ValueError, match=rf"different configuration \({name}: .*--overwrite"):
            control._Progress(tmp_path, changed, ids, overwrite=False)
    with pytest.raises(ValueError, match=r"problem_ids"):
        control._Progress(tmp_path, settings, {**ids, "gsm8k": ["g2"]}, overwrite=False)


# ------------------------------------------------------------------------------------------------ report


def test_the_report_has_a_table_per_source_and_mode_and_per_family(tmp_path):
    from autodeco.views.control import control_markdown, family_table, write_control_report

    questions = [question(source, i, (0.7, 0.9), (0.6, 0.8), (0.8, 0.95), neutral=(0.7, 0.9), compare=1.0)
                 for source in ("arithmetic", "gsm8k") for i in range(4)]
    for item in questions:
        item["same_answer"] = {name: {"temperature": value["temperature"], "top_p": value["top_p"], "tokens": 3}
                               for name, value in item["heads"]["sampled"].items()}
    result = summarise(questions, resamples=50)
    result["settings"] = {"heads": "h", "split": "test", "samples": 4, "max_new_tokens_per_source": {"arithmetic": 32},
                          "eval_families": [{"name": "low-a", "kind": "low", "placement": "after", "language": "de",
                                             "style": "x", "phrasings": ["Sei genau."]}]}
    markdown = control_markdown(result)
    for header in ("| arithmetic, sampled (N = 4) |", "| arithmetic, greedy (N = 4) |", "| gsm8k, greedy (N = 4) |"):
        assert header in markdown
    assert "| neutral | 0.700 | +0.000 [+0.000, +0.000] | 0 % ↑ / 0 % ↓ |" in markdown
    assert "| low | 0.600 | -0.100 [-0.100, -0.100] | 100 % lower |" in markdown
    assert "| low-a | low | after | de | eval | 2 | 100 % lower | 100 % lower | 100 % lower | 100 % lower |" in (
        family_table(result, "gsm8k"))
    assert "same tokens" in markdown and "Goal check" in markdown and "“Sei genau.”" in markdown
    assert "gsm8k: accuracy without a command within 1 point" in markdown
    files = write_control_report(tmp_path, result)
    assert files["control.png"].read_bytes()[:4] == b"\x89PNG"
    assert json.loads(files["control.json"].read_text())["sources"] == ["arithmetic", "gsm8k"]


# ------------------------------------------------------------------------------------------- end to end


def write_family_file(path):
    def entry(name, kind, split, texts, placement="after"):
        return {"name": name, "kind": kind, "split": split, "placement": placement, "language": "en", "style": "test",
                "phrasings": texts}

    families = [
        entry("low-train", "low", "train", ["Be exact."]), entry("high-train", "high", "train", ["Be wild."]),
        entry("low-after", "low", "eval", ["Stay precise.", "Be rigorous."]),
        entry("low-system", "low", "eval", ["You are a careful auditor."], "system"),
        entry("high-before", "high", "eval", ["Surprise me."], "before"),
        entry("note", "neutral", "eval", ["Filed on a Monday."]),
    ]
    path.write_text(json.dumps({"version": 2, "families": families}))
    return path


def test_tiny_end_to_end_two_sources_both_modes_and_a_neutral_sentence(tiny_chat_model_dir, tmp_path, monkeypatch):
    """Two sources (arithmetic and a GSM8K-format file), sampled and greedy, four prompts; resumable."""
    from autodeco.model.modeling import AutoDecoForCausalLM

    heads = tmp_path / "heads"
    AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0).save_pretrained(heads)
    word_problems = tmp_path / "word.jsonl"
    word_problems.write_text("".join(json.dumps({"question": f"Ann has {a} apples and buys 2. How many now?",
                                                 "answer": f"{a} + 2 = {a + 2}\n#### {a + 2}"}) + "\n"
                                     for a in range(3)))
    config = ControlEvalConfig(heads=str(heads), datasets=["arithmetic", str(word_problems)], questions=3, samples=2,
                               max_new_tokens=4, batch_size=2, resamples=20, phrasings=str(write_family_file(tmp_path / "f.json")))
    calls = []
    original = control._complete

    def counted(model, tokenizer, batch, seed, setting, num_samples, max_new_tokens):
        calls.append((setting.kind, num_samples, seed))
        return original(model, tokenizer, batch, seed, setting, num_samples, max_new_tokens)

    monkeypatch.setattr(control, "_complete", counted)
    result = control.control_evaluation(config, output=tmp_path / "run", progress=False)
    # 2 sources x 2 batches x 2 modes x 4 prompts
    assert len(calls) == 32 and {(kind, samples) for kind, samples, _ in calls} == {("autodeco", 2), ("greedy", 1)}
    assert len({seed for _, _, seed in calls[:8]}) == 1 and calls[0][2] != calls[8][2]  # one seed per batch
    assert result["sources"] == ["arithmetic", str(word_problems)] and len(result["questions"]) == 6
    assert result["settings"]["max_new_tokens_per_source"] == {"arithmetic": 4, str(word_problems): 4}
    first, second = result["questions"][3], result["questions"][4]  # the word problems' first two
    assert (first["commands"]["low"]["family"], second["commands"]["low"]["family"]) == ("low-after", "low-system")
    assert second["commands"]["low"] == {"text": "You are a careful auditor.", "family": "low-system", "placement": "system"}
    assert first["commands"]["neutral"]["text"] == "Filed on a Monday."
    for item in result["questions"]:
        assert set(item["heads"]) == {"sampled", "greedy"} and set(item["same_answer"]) == {"none", "low", "high", "neutral"}
        for condition in ("none", "low", "high", "neutral"):
            greedy = item["heads"]["greedy"][condition]
            assert len(greedy["texts"]) == 1 and 1 <= greedy["tokens"] <= 4 and "distinct_ngrams" not in greedy
            assert 0 < greedy["temperature"] < 5 and 0 < greedy["top_p"] <= 1  # the heads' values at greedy tokens
            assert len(item["heads"]["sampled"][condition]["texts"]) == 2
        assert "token_ids" not in item["heads"]["greedy"]["none"]
    for source in result["sources"]:
        summary = result["by_source"][source]
        assert summary["same_answer"]["generated_gap"] < 1e-4
        for mode in ("sampled", "greedy"):
            measured = summary["modes"][mode]
            assert measured["neutral"]["temperature"]["questions"] == 3
            assert sum(entry["questions"] for entry in measured["families"] if entry["kind"] == "low") == 3
    criteria = result["goal"]["criteria"]
    assert sum(item["kind"] == "neutral" for item in criteria) == 2 * 2 * 2
    assert len(result["goal"]["not_judged"]) == 2  # no compared heads: accuracy per source

    calls.clear()
    again = control.control_evaluation(config, output=tmp_path / "run", progress=False)
    assert calls == [] and again["questions"] == result["questions"]  # everything recorded: nothing answered again


def test_greedy_values_are_the_heads_values_at_the_greedy_tokens(tiny_chat_model_dir):
    """Teacher-forcing a greedy answer gives the values AutoDeco decoding would use at those positions."""
    import torch

    from autodeco.model.base_model import load_tokenizer
    from autodeco.model.modeling import AutoDecoForCausalLM
    from autodeco.sampling.inference import render_prompt
    from autodeco.sampling.rollouts import complete, prefill
    from autodeco.sampling.settings import DecodingSetting

    model = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=2).eval()
    tokenizer = load_tokenizer(str(tiny_chat_model_dir))
    messages = [[{"role": "user", "content": "What is 1 + 2?"}], [{"role": "system", "content": "Be exact."},
                                                                   {"role": "user", "content": "What is 3 + 4?"}]]
    batch = prefill(model.llm, tokenizer, [render_prompt(tokenizer, prompt) for prompt in messages])
    greedy = complete(model, tokenizer, batch, DecodingSetting.greedy(), max_new_tokens=5)
    assert greedy[0][0].temperatures is None  # greedy decoding records nothing: hence the teacher-forced pass
    valued = control._with_heads_values(model, tokenizer, messages, greedy)
    for prompt, (sample,) in zip(messages, valued):
        assert len(sample.temperatures) == len(sample.top_ps) == len(sample.token_ids)
        from autodeco.data.tokens import tokenize_prompt

        ids = tokenize_prompt(tokenizer, prompt)
        with torch.no_grad():
            output = model(input_ids=torch.tensor([ids + sample.token_ids]))
        start = len(ids) - 1  # the position that chose the first answer token
        expected = output.temperature[0, start : start + len(sample.token_ids)].tolist()
        assert sample.temperatures == pytest.approx(expected, rel=1e-4, abs=1e-5)
        # and the greedy tokens are the argmax there
        assert output.logits[0, start : start + len(sample.token_ids)].argmax(-1).tolist() == sample.token_ids
    assert all(math.isfinite(value) for (sample,) in valued for value in sample.top_ps)
