"""Decoding control (PAPER.md section 7): the ranking loss, phrasing files, pairing, training and control-eval."""

import dataclasses
import json
import math

import pytest
import torch

from autodeco.core import losses
from autodeco.core.control_losses import completion_means, ranking_loss
from autodeco.training import control_losses, loss_step, recipe
from autodeco.training.config import TrainConfig
from autodeco.data.phrasings import (
    BUILTIN_PHRASINGS, Command, ControlPhrasings, ControlPhrasingsError, PhrasingFamily, append_command, command_messages,
    command_text, load_phrasings,
)
from autodeco.training.control import control_choice
from autodeco.training.data import CommandedExamples, build_training_set

# ------------------------------------------------------------------------------------ ranking loss


def test_ranking_loss_is_zero_when_the_order_already_holds_by_the_margin():
    plain = torch.tensor([0.70, 0.70, 0.70, 0.70])
    command = torch.tensor([0.55, 0.60, 0.85, 0.80])
    directions = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    # low: relu(cmd - plain + m); high: relu(plain - cmd + m), m = 0.1
    expected = torch.tensor([0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(ranking_loss(command, plain, directions, margin=0.1), expected, rtol=0, atol=1e-6)
    # Inside the margin or on the wrong side: the hinge's value, written out.
    command = torch.tensor([0.65, 0.80, 0.75, 0.50])
    expected = torch.tensor([0.65 - 0.70 + 0.1, 0.80 - 0.70 + 0.1, 0.70 - 0.75 + 0.1, 0.70 - 0.50 + 0.1])
    torch.testing.assert_close(ranking_loss(command, plain, directions, margin=0.1), expected, rtol=0, atol=1e-6)


def test_ranking_loss_gradient_pushes_low_commands_down_and_high_commands_up():
    command = torch.tensor([0.80, 0.60], requires_grad=True)  # low above plain, high below plain: both violated
    plain = torch.tensor([0.70, 0.70], requires_grad=True)
    directions = torch.tensor([-1.0, 1.0])
    ranking_loss(command, plain, directions, margin=0.05, detach_plain=False).sum().backward()
    # A descent step moves against the gradient: low's commanded mean goes down, high's up, the plain ones the other way.
    assert command.grad.tolist() == [1.0, -1.0]
    assert plain.grad.tolist() == [-1.0, 1.0]
    command.grad = None
    ranking_loss(command, plain.detach().requires_grad_(), directions, margin=0.05).sum().backward()
    assert command.grad.tolist() == [1.0, -1.0]
    satisfied = torch.tensor([0.5, 0.9], requires_grad=True)
    ranking_loss(satisfied, torch.tensor([0.7, 0.7]), directions, margin=0.05).sum().backward()
    assert satisfied.grad.tolist() == [0.0, 0.0]  # order holds by the margin: no push at all


def test_ranking_loss_refuses_a_negative_margin_and_bad_directions():
    values = torch.tensor([0.5])
    with pytest.raises(ValueError, match="margin must be >= 0, got -0.1"):
        ranking_loss(values, values, torch.tensor([1.0]), margin=-0.1)
    with pytest.raises(ValueError, match=r"directions must be -1 \(low\) or \+1 \(high\), got \[0.0\]"):
        ranking_loss(values, values, torch.tensor([0.0]))


def test_completion_means_average_the_positions_that_predict_labelled_tokens():
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5], [0.9, 0.8, 0.7, 0.6, 0.5]])
    labels = torch.tensor([[-100, -100, 7, 8, 2], [-100, 5, 2, -100, -100]])
    # Row 0: positions 1, 2, 3 predict tokens 2, 3, 4 -> (0.2 + 0.3 + 0.4) / 3; row 1: positions 0, 1 -> (0.9 + 0.8) / 2.
    torch.testing.assert_close(completion_means(values, labels), torch.tensor([0.3, 0.85]), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------- phrasings


def test_builtin_phrasings_keep_training_and_evaluation_apart():
    phrasings = load_phrasings()
    assert phrasings.source == str(BUILTIN_PHRASINGS)
    for kind in ("low", "high"):
        assert len(phrasings.train[kind]) >= 5 and len(phrasings.eval[kind]) >= 3
        assert not set(phrasings.train[kind]) & set(phrasings.eval[kind])
    # The shipped checkpoint's phrasings keep their split (it was trained on the train ones).
    assert "I hope the answers can be more innovative and diverse." in phrasings.train["high"]
    assert "Please answer as certain as possible." in phrasings.train["low"]
    assert "I need the answer to be as sure and consistent as possible." in phrasings.eval["low"]
    assert "Answer with lots of creativity and variety." in phrasings.eval["high"]


def normalised(text):
    return " ".join(text.casefold().split())


def test_builtin_families_are_split_whole_and_share_no_phrasing():
    families = load_phrasings().families
    assert len({family.name for family in families}) == len(families)
    texts = {split: {normalised(text) for family in families if family.split == split for text in family.phrasings}
             for split in ("train", "eval")}
    assert texts["train"] and texts["eval"] and not texts["train"] & texts["eval"]
    assert all(4 <= len(family.phrasings) <= 8 for family in families)


@pytest.mark.parametrize("kind", ["low", "high"])
def test_builtin_commands_cover_styles_placements_and_languages_in_both_splits(kind):
    phrasings = load_phrasings()
    train, evaluation = phrasings.families_for("train", kind), phrasings.families_for("eval", kind)
    assert 14 <= len(train) + len(evaluation) <= 20 and len(train) > len(evaluation)
    for families in (train, evaluation):
        assert {family.placement for family in families} == {"after", "before", "system"}
        assert {"terse", "polite", "indirect", "negated", "question", "role"} <= {family.style for family in families}
        assert any(family.style == "role" and family.placement == "system" for family in families)
    languages = {split: {family.language for family in families} for split, families in (("train", train), ("eval", evaluation))}
    assert {"fr", "es", "de"} <= languages["train"] | languages["eval"]  # every language the base reads, each kind
    assert languages["eval"] - languages["train"] - {"en"}  # a language this kind's training never wrote


def test_builtin_negated_commands_point_both_ways():
    phrasings = load_phrasings()
    negated = {(split, kind): [text for family in phrasings.families_for(split, kind) if family.style == "negated"
                               for text in family.phrasings]
               for split in ("train", "eval") for kind in ("low", "high")}
    assert all(negated.values())  # every split and kind has a negated family
    assert "Don't be creative." in negated["train", "low"] and "Don't hold back on originality." in negated["train", "high"]
    assert "No surprises, please." in negated["eval", "low"] and "Don't give me the usual answer." in negated["eval", "high"]


def test_builtin_languages_other_than_english_appear_in_both_splits():
    phrasings = load_phrasings()
    for split in ("train", "eval"):
        languages = {family.language for kind in ("low", "high") for family in phrasings.families_for(split, kind)}
        assert len(languages - {"en"}) >= 2, (split, languages)


CONTROL_WORDS = ("certain", "precise", "exact", "careful", "creativ", "divers", "original", "imagin", "surpris", "varied",
                 "variety", "standard", "reliable", "random", "focus", "wild", "unusual", "prudent", "genau", "kreativ")


def test_builtin_neutral_sentences_are_as_long_as_commands_and_ask_for_nothing():
    phrasings = load_phrasings()
    for split in ("train", "eval"):
        families = phrasings.families_for(split, "neutral")
        assert len(families) >= 3 and any(family.placement == "system" for family in families)
        assert all(command.direction == 0 for command in phrasings.commands(split, "neutral"))
    neutral = [command.text for split in ("train", "eval") for command in phrasings.commands(split, "neutral")]
    assert not [text for text in neutral if any(word in text.casefold() for word in CONTROL_WORDS)]
    commands = [text for split in ("train", "eval") for kind in ("low", "high") for text in getattr(phrasings, split)[kind]]
    mean_words = lambda texts: sum(len(text.split()) for text in texts) / len(texts)  # noqa: E731
    assert 0.6 < mean_words(neutral) / mean_words(commands) < 1.5


def test_commands_come_from_families_in_file_order():
    phrasings = load_phrasings()
    commands = phrasings.commands("train", "low")
    assert [command.text for command in commands] == list(phrasings.train["low"])
    assert [command.family for command in commands][:1] == [phrasings.families_for("train", "low")[0].name]
    assert {command.direction for command in commands} == {-1}
    assert {command.direction for command in phrasings.commands("eval", "high")} == {1}
    with pytest.raises(ValueError, match="split must be one of train, eval, got 'test'"):
        phrasings.families_for("test", "low")


@pytest.mark.parametrize("placement, expected", [
    ("after", [{"role": "user", "content": "What is 2 + 2?\nBe exact."}]),
    ("before", [{"role": "user", "content": "Be exact.\nWhat is 2 + 2?"}]),
    ("system", [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "What is 2 + 2?"}]),
])
def test_command_messages_put_the_command_in_its_place(placement, expected):
    command = Command("Be exact.", "low", "terse-exact", placement)
    assert command_messages("What is 2 + 2?", command) == expected
    assert command_text("What is 2 + 2?", command) == "\n".join(message["content"] for message in expected)


def test_a_text_command_goes_after_the_question_as_before_and_none_leaves_the_prompt():
    assert command_messages("What is 2 + 2?  ", "Be exact.") == [{"role": "user", "content": append_command("What is 2 + 2?  ", "Be exact.")}]
    assert command_messages("What is 2 + 2?", None) == [{"role": "user", "content": "What is 2 + 2?"}]
    assert command_text("What is 2 + 2?", None) == "What is 2 + 2?"
    with pytest.raises(ValueError, match="placement must be one of after, before, system, got 'middle'"):
        Command("Be exact.", placement="middle")


SMOLLM2_CHAT_TEMPLATE = (  # SmolLM2-135M-Instruct's own template: a default system turn unless one is given
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_a_system_command_is_rendered_in_the_system_turn(tiny_chat_model_dir):
    from transformers import AutoTokenizer

    from autodeco.data.tokens import tokenize_prompt
    from autodeco.sampling.inference import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    messages = command_messages("What is 2 + 2?", Command("You are a precise calculator.", placement="system"))
    assert render_prompt(tokenizer, messages) == (
        "<|im_start|>system\nYou are a precise calculator.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    )
    plain = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    assert render_prompt(tokenizer, "What is 2 + 2?").startswith(plain)  # a text prompt renders as before
    assert render_prompt(tokenizer, command_messages("What is 2 + 2?", None)) == render_prompt(tokenizer, "What is 2 + 2?")
    assert tokenize_prompt(tokenizer, messages) == tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]
    assert render_prompt(tokenizer, messages, chat_template=False) == "You are a precise calculator.\nWhat is 2 + 2?"
    with pytest.raises(ValueError, match="the prompt is empty"):
        render_prompt(tokenizer, [{"role": "system", "content": " "}, {"role": "user", "content": "\n"}])
    with pytest.raises(ValueError, match="chat message 0 must be a dict with a 'role' and a text 'content'"):
        render_prompt(tokenizer, [{"content": "What is 2 + 2?"}])


def test_a_chat_template_refusing_a_system_message_is_named(tiny_chat_model_dir):
    from transformers import AutoTokenizer

    from autodeco.sampling.inference import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_chat_model_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    messages = command_messages("What is 2 + 2?", Command("Be exact.", placement="system"))
    with pytest.raises(ValueError, match=r"refuses messages with roles \['system', 'user'\]: System role not supported; "
                                         "put the command in the user message instead"):
        render_prompt(tokenizer, messages)


def write_phrasings(path, content):
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


GOOD = {"low": {"train": ["be sure"], "eval": ["be certain"]}, "high": {"train": ["be wild"], "eval": ["be free"]}}


def test_a_version_1_file_loads_as_four_families(tmp_path):
    phrasings = load_phrasings(write_phrasings(tmp_path / "old.json", {"description": "old", **GOOD}))
    assert [(family.name, family.kind, family.split, family.placement, family.language, family.style)
            for family in phrasings.families] == [
        ("low-train", "low", "train", "after", "en", "list"), ("low-eval", "low", "eval", "after", "en", "list"),
        ("high-train", "high", "train", "after", "en", "list"), ("high-eval", "high", "eval", "after", "en", "list"),
    ]
    assert phrasings.train == {"low": ("be sure",), "high": ("be wild",)}
    assert phrasings.eval == {"low": ("be certain",), "high": ("be free",)}
    assert phrasings.families_for("train", "neutral") == ()


@pytest.mark.parametrize("content, message", [
    ("", r"is empty"),
    ("{\"low\": ", r"is not valid JSON \(Expecting value at line 1 column 9\)"),
    ([1, 2], r"must hold a JSON object, .*got list"),
    ({"low": GOOD["low"]}, r"'high' must be an object with 'train' and 'eval' lists of phrasings, got missing"),
    ({**GOOD, "high": {"train": [], "eval": ["x"]}}, r"high.train must be a non-empty list of phrasings \(strings\), got \[\]"),
    ({**GOOD, "low": {"train": ["ok", "  "], "eval": ["x"]}}, r"low.train\[1\] must be a non-empty string, got '  '"),
    ({**GOOD, "low": {"train": ["Be Sure"], "eval": ["be  sure"]}}, r"low.train and low.eval share 'be sure'"),
])
def test_bad_phrasing_files_are_refused_saying_what_is_wrong(tmp_path, content, message):
    path = write_phrasings(tmp_path / "phrasings.json", content)
    with pytest.raises(ControlPhrasingsError, match=message):
        load_phrasings(path)


def family(name, kind, split, *phrasings, **extra):
    return {"name": name, "kind": kind, "split": split, "phrasings": list(phrasings), **extra}


GOOD_FAMILIES = [
    family("low-a", "low", "train", "Be exact."), family("low-b", "low", "eval", "Play it safe.", placement="system"),
    family("high-a", "high", "train", "Be creative."), family("high-b", "high", "eval", "Go wild.", language="fr"),
    family("neutral-a", "neutral", "train", "Sent from my phone.", style="remark"),
]


def with_family(index, **changes):
    families = [dict(entry) for entry in GOOD_FAMILIES]
    families[index].update(changes)
    return {"version": 2, "families": families}


def test_a_version_2_file_fills_the_optional_keys(tmp_path):
    phrasings = load_phrasings(write_phrasings(tmp_path / "p.json", {"description": "mine", "version": 2, "families": GOOD_FAMILIES}))
    assert phrasings.families[0] == PhrasingFamily("low-a", "low", "train", "after", "en", "", ("Be exact.",))
    assert phrasings.commands("eval", "low") == (Command("Play it safe.", "low", "low-b", "system"),)
    assert phrasings.eval == {"low": ("Play it safe.",), "high": ("Go wild.",)}
    assert isinstance(phrasings, ControlPhrasings) and len(phrasings.fingerprint) == 64


@pytest.mark.parametrize("content, message", [
    (with_family(1, kind="medium"), r"families\[1\] \('low-b'\): 'kind' must be one of low, high, neutral, got 'medium'"),
    (with_family(2, split="test"), r"families\[2\] \('high-a'\): 'split' must be one of train, eval, got 'test'"),
    (with_family(3, placement="middle"), r"families\[3\] \('high-b'\): 'placement' must be one of after, before, system, got 'middle'"),
    (with_family(3, name="low-a"), r"families\[3\] \('low-a'\) repeats the name of families\[0\] \('low-a'\); give each"),
    (with_family(0, phrasing=["x"]), r"families\[0\] \('low-a'\): unknown key 'phrasing'; a family holds only name, kind"),
    (with_family(1, phrasings=["be  EXACT."]), r"families\[0\] \('low-a'\) \(train\) and families\[1\] \('low-b'\) \(eval\) "
                                              r"share 'be  EXACT.'; evaluation must use phrasings never seen in training"),
    (with_family(4, phrasings=["Be creative."]), r"families\[2\] \('high-a'\) \(high\) and families\[4\] \('neutral-a'\) "
                                                 r"\(neutral\) share 'Be creative.'; one phrasing cannot ask for two"),
    (with_family(1, kind="neutral"), r"has no eval family of kind 'low' \(its low families: 'low-a'\); add one with"),
    (with_family(2, phrasings=[]), r"families\[2\] \('high-a'\): 'phrasings' must be a non-empty list of texts, got \[\]"),
    (with_family(2, phrasings=["ok", " "]), r"families\[2\] \('high-a'\): phrasings\[1\] must be a non-empty string, got ' '"),
    (with_family(0, name=""), r"families\[0\] \(no name\): 'name' must be a non-empty string, got ''"),
    (with_family(0, kind=None) | {"families": ["low"]}, r"families\[0\] \(no name\) must be an object with name, kind"),
    ({"version": 2, "families": [{"name": "x", "kind": "low", "split": "train"}]}, r"families\[0\] \('x'\) lacks 'phrasings'"),
    ({"version": 2, "families": []}, r"'families' must be a non-empty list of families, got \[\]"),
    ({"version": 2, "familes": GOOD_FAMILIES}, r"unknown key 'familes'; a version-2 file holds only description, version, families"),
    ({"version": 3, "families": GOOD_FAMILIES}, r"version 3 is not a phrasing-file version this autodeco reads; write 2"),
])
def test_bad_families_are_refused_naming_the_file_and_the_family(tmp_path, content, message):
    path = write_phrasings(tmp_path / "families.json", content)
    with pytest.raises(ControlPhrasingsError, match=r"control phrasing file '.*families.json'.*" + message):
        load_phrasings(path)


def test_missing_phrasing_file_is_named(tmp_path):
    with pytest.raises(ControlPhrasingsError, match=r"'.*nothing.json' does not exist"):
        load_phrasings(tmp_path / "nothing.json")


def test_control_choice_is_a_function_of_seed_epoch_and_index_and_uses_training_phrasings_only():
    phrasings = load_phrasings()
    choices = [control_choice(0, 0, index, 0.5, phrasings) for index in range(2000)]
    assert choices == [control_choice(0, 0, index, 0.5, phrasings) for index in range(2000)]
    paired = [choice for choice in choices if choice is not None]
    assert 0.45 < len(paired) / len(choices) < 0.55
    assert {choice.kind for choice in paired} == {"low", "high"}
    assert all(choice.phrasing in phrasings.train[choice.kind] for choice in paired)
    assert choices != [control_choice(0, 1, index, 0.5, phrasings) for index in range(2000)]  # a new draw each epoch
    assert all(control_choice(0, 0, index, 1.0, phrasings) is not None for index in range(50))


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("overrides, message", [
    ({"control_share": 1.5}, r"control_share must be a share in \[0, 1\] \(0 turns decoding control off\), got 1.5"),
    ({"control_share": -0.1}, r"control_share must be a share in \[0, 1\]"),
    ({"control_margin": -0.05}, r"control_margin must be a finite number >= 0, got -0.05"),
    ({"control_weight": -1.0}, r"control_weight must be a finite number >= 0, got -1.0"),
    ({"control_heads": "both"}, r"control_heads must be one of \['joint', 'temperature', 'top-p'\], got 'both'"),
    ({"control_top_p_scale": "log"}, r"control_top_p_scale must be one of \['logit', 'probability', 'bounded'\], got 'log'"),
    ({"control_top_p_margin": -0.5}, r"control_top_p_margin must be a finite number >= 0 \(or None: control_margin\), got -0.5"),
    ({"control_top_p_margin": float("nan")}, r"control_top_p_margin must be a finite number >= 0"),
    ({"control_pairing": "two"}, r"control_pairing must be one of \['one', 'both'\], got 'two'"),
    ({"control_temperature_scale": "logit"}, r"control_temperature_scale must be one of \['linear', 'log'\], got 'logit'"),
    ({"control_share": 0.5, "mode": "temperature"},
     r"control_heads 'joint' ranks the top-p predictions, but mode 'temperature' disables the top-p head; "
     r"pass --control-heads temperature"),
    ({"control_share": 0.5, "mode": "top-p", "control_heads": "temperature"},
     r"ranks the temperature predictions, but mode 'top-p' disables the temperature head"),
    ({"control_top_p_room": 0.0}, r"control_top_p_room must be a share in \(0, 1\], got 0.0"),
    ({"control_top_p_room": 1.5}, r"control_top_p_room must be a share in \(0, 1\], got 1.5"),
    ({"control_share": 0.5, "control_anchor_weight": -1.0}, r"control_anchor_weight must be a finite number >= 0, got -1.0"),
    ({"control_anchor": "shipped:smollm2-135m-instruct"},
     r"control_anchor 'shipped:smollm2-135m-instruct' keeps .* but decoding control is off; pass --control-share above 0"),
])
def test_control_settings_are_validated(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data=["t.jsonl"], output_dir="run", **overrides)


def test_control_losses_use_each_scale_and_margin_on_hand_built_values():
    """T on the log scale with margin log 2 (a ratio of 2), P on the logit scale with its own margin 1."""
    ignored = losses.IGNORE_INDEX
    # rows 0-1 plain, rows 2-3 their commanded copies (2 low of row 0, 3 high of row 1); one labelled position each
    labels = torch.tensor([[ignored, 5, ignored]] * 4)
    temperature = torch.tensor([[0.8, 0.0, 0.0], [0.8, 0.0, 0.0], [0.5, 0.0, 0.0], [1.2, 0.0, 0.0]], requires_grad=True)
    top_p = torch.sigmoid(torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0.5, 0, 0], [2.5, 0, 0]]))
    batch = {"labels": labels, "control_rows": torch.tensor([0, 1]), "control_directions": torch.tensor([-1, 1])}
    config = TrainConfig(data=["t.jsonl"], output_dir="run", control_share=1.0, control_margin=math.log(2.0),
                         control_top_p_margin=1.0, control_temperature_scale="log", control_weight=1.0)
    result = control_losses.control_losses(temperature, top_p, batch, config)
    # T: low needs 0.5 <= 0.4 (0.8 / 2): hinge log(0.5 / 0.4); high needs 1.2 >= 1.6: hinge log(1.6 / 1.2)
    expected_temperature = math.log(0.5 / 0.4) + math.log(1.6 / 1.2)
    # P (logits): low 0.5 <= 1 - 1 = 0: hinge 0.5; high 2.5 >= 1 + 1: already holds, hinge 0
    assert result.temperature_loss_sum == pytest.approx(expected_temperature, rel=1e-5, abs=1e-6)
    assert result.top_p_loss_sum == pytest.approx(0.5, rel=1e-5, abs=1e-6)
    assert float(result.total.detach()) == pytest.approx(expected_temperature + 0.5, rel=1e-5, abs=1e-6)
    assert result.temperature_moved == 2 and result.top_p_moved == 2
    result.total.backward()
    assert temperature.grad[2, 0] > 0 and temperature.grad[3, 0] < 0  # descent lowers the low copy, raises the high one
    assert temperature.grad[:2].abs().sum() == 0  # the plain side is detached

    linear = TrainConfig(data=["t.jsonl"], output_dir="run", control_share=1.0, control_margin=0.1)
    assert linear.control_margins == {"temperature": 0.1, "top-p": 0.1}  # one margin for both by default
    result = control_losses.control_losses(temperature.detach(), top_p, batch, linear)
    assert result.temperature_loss_sum == pytest.approx(0.0 + 0.0, abs=1e-6)  # 0.5 <= 0.7 and 1.2 >= 0.9 hold


def test_anchor_loss_is_the_plain_rows_mean_squared_distance_on_the_ranking_scales():
    """Per row, the mean over its completion positions of the squared differences; rows without one count for nothing."""
    from types import SimpleNamespace

    ignored = losses.IGNORE_INDEX
    # row 0 predicts at positions 0 and 1, row 1 at position 0, row 2 nowhere
    labels = torch.tensor([[ignored, 5, 6], [ignored, 5, ignored], [ignored, ignored, ignored]])
    temperature = torch.tensor([[0.5, 1.0, 9.0], [0.8, 9.0, 9.0], [9.0, 9.0, 9.0]], requires_grad=True)
    anchor_temperature = torch.tensor([[1.0, 1.0, 0.1], [0.4, 0.1, 0.1], [0.1, 0.1, 0.1]])
    top_p = torch.sigmoid(torch.tensor([[0.0, 1.0, 5.0], [2.0, 5.0, 5.0], [5.0, 5.0, 5.0]]))
    anchor_top_p = torch.sigmoid(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    config = TrainConfig(data=["t.jsonl"], output_dir="run", control_share=1.0, control_temperature_scale="log",
                         control_anchor="unused", control_anchor_weight=2.0)
    both = SimpleNamespace(enable_temperature_head=True, enable_top_p_head=True)
    result = control_losses.anchor_loss(temperature, top_p, anchor_temperature, anchor_top_p, labels, both, config)
    log2 = math.log(2.0) ** 2  # (log 0.5 - log 1)^2 and (log 0.8 - log 0.4)^2
    assert result.rows == 2
    assert float(result.total.detach()) == pytest.approx(2.0 * ((log2 + 1.0) / 2 + (log2 + 4.0)), rel=1e-5, abs=1e-6)
    result.total.backward()
    assert temperature.grad[0, 0] < 0 and temperature.grad[1, 0] > 0  # descent moves each T towards the anchor's
    assert temperature.grad[0, 1] == 0 and temperature.grad[:, 2].abs().sum() == 0 and temperature.grad[2].abs().sum() == 0

    only_temperature = SimpleNamespace(enable_temperature_head=True, enable_top_p_head=False)
    linear = dataclasses.replace(config, control_temperature_scale="linear", control_anchor_weight=1.0)
    result = control_losses.anchor_loss(temperature.detach(), top_p, anchor_temperature, anchor_top_p, labels, only_temperature, linear)
    assert float(result.total) == pytest.approx(0.5**2 / 2 + 0.4**2, rel=1e-5, abs=1e-6)  # P is not anchored
    probability = dataclasses.replace(linear, control_top_p_scale="probability")
    only_top_p = SimpleNamespace(enable_temperature_head=False, enable_top_p_head=True)
    result = control_losses.anchor_loss(temperature.detach(), top_p, anchor_temperature, anchor_top_p, labels, only_top_p, probability)
    expected = (float(top_p[0, 0] - anchor_top_p[0, 0]) ** 2 / 2 + float(top_p[1, 0] - anchor_top_p[1, 0]) ** 2)
    assert float(result.total) == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert float(control_losses.anchor_loss(anchor_temperature, anchor_top_p, anchor_temperature, anchor_top_p, labels, both,
                                    config).total) == 0.0


def test_bounded_top_p_scale_keeps_probability_values_with_the_logit_gradient():
    """Values as they are; the derivative with respect to the head's pre-sigmoid output is 1, also where P saturates."""
    config = TrainConfig(data=["t.jsonl"], output_dir="run", control_share=1.0, control_top_p_scale="bounded")
    head_logits = torch.tensor([0.0, 3.0, 7.0], requires_grad=True)
    top_p = torch.sigmoid(head_logits)
    bounded = control_losses._on_top_p_scale(top_p, config)
    torch.testing.assert_close(bounded, top_p, rtol=0, atol=0)
    bounded.sum().backward()
    torch.testing.assert_close(head_logits.grad, torch.ones(3), rtol=1e-5, atol=1e-6)
    head_logits.grad = None
    control_losses._on_top_p_scale(torch.sigmoid(head_logits), dataclasses.replace(config, control_top_p_scale="probability")).sum().backward()
    assert float(head_logits.grad[2]) == pytest.approx(math.exp(-7.0) / (1 + math.exp(-7.0)) ** 2, rel=1e-4)  # ~0.0009


def test_bounded_top_p_scale_caps_each_margin_at_a_share_of_the_room_left():
    """At the default room share 0.5. Low pair: plain 0.9, margin min(0.1, 0.45) = 0.1; high pair: plain 0.96, margin
    min(0.1, 0.02) = 0.02."""
    ignored = losses.IGNORE_INDEX
    labels = torch.tensor([[ignored, 5]] * 4)  # rows 0-1 plain, 2 the low copy of row 0, 3 the high copy of row 1
    batch = {"labels": labels, "control_rows": torch.tensor([0, 1]), "control_directions": torch.tensor([-1, 1])}
    temperature = torch.tensor([[0.5, 0.0], [0.5, 0.0], [0.1, 0.0], [0.9, 0.0]])  # T's order holds by its margin
    head_logits = torch.logit(torch.tensor([[0.9, 0.0], [0.96, 0.0], [0.85, 0.0], [0.975, 0.0]], dtype=torch.float64))
    head_logits = head_logits.float().requires_grad_()
    config = TrainConfig(data=["t.jsonl"], output_dir="run", control_share=1.0, control_margin=0.1,
                         control_top_p_scale="bounded", control_weight=2.0)
    result = control_losses.control_losses(temperature, torch.sigmoid(head_logits), batch, config)
    # low: 0.85 - 0.9 + 0.1 = 0.05; high: 0.96 + 0.02 - 0.975 = 0.005
    assert result.top_p_loss_sum == pytest.approx(0.055, rel=1e-4, abs=1e-6)
    assert result.temperature_loss_sum == 0.0
    result.total.backward()
    expected = torch.tensor([[0.0, 0.0], [0.0, 0.0], [2.0, 0.0], [-2.0, 0.0]])  # the weight, straight to the logits
    torch.testing.assert_close(head_logits.grad, expected, rtol=1e-4, atol=1e-5)

    # the whole room: the high pair's margin is min(0.1, 0.04), hinge 0.96 + 0.04 - 0.975 = 0.025
    whole_room = dataclasses.replace(config, control_top_p_room=1.0)
    result = control_losses.control_losses(temperature, torch.sigmoid(head_logits.detach()), batch, whole_room)
    assert result.top_p_loss_sum == pytest.approx(0.05 + 0.025, rel=1e-4, abs=1e-6)

    # the same values on the probability scale: the high pair's margin stays 0.1 (0.96 + 0.1 > 1 can never hold)
    probability = dataclasses.replace(config, control_top_p_scale="probability")
    result = control_losses.control_losses(temperature, torch.sigmoid(head_logits.detach()), batch, probability)
    assert result.top_p_loss_sum == pytest.approx(0.05 + 0.085, rel=1e-4, abs=1e-6)


def test_bounded_anchor_gradient_is_the_probability_distance_on_the_logits():
    ignored = losses.IGNORE_INDEX
    labels = torch.tensor([[ignored, 5]])
    head_logits = torch.tensor([[7.0, 0.0]], requires_grad=True)
    anchor_top_p = torch.tensor([[0.9, 0.5]])
    config = TrainConfig(data=["t.jsonl"], output_dir="run", control_share=1.0, control_top_p_scale="bounded",
                         control_anchor="unused", control_anchor_weight=1.0)
    from types import SimpleNamespace

    only_top_p = SimpleNamespace(enable_temperature_head=False, enable_top_p_head=True)
    top_p = torch.sigmoid(head_logits)
    unused = torch.ones(1, 2)  # T: not anchored here
    result = control_losses.anchor_loss(unused, top_p, unused, anchor_top_p, labels, only_top_p, config)
    distance = float(top_p[0, 0].detach()) - 0.9
    assert float(result.total.detach()) == pytest.approx(distance**2, rel=1e-5, abs=1e-7)
    result.total.backward()
    assert float(head_logits.grad[0, 0]) == pytest.approx(2 * distance, rel=1e-4)  # not 2 x distance x P (1 - P)


def test_a_bad_phrasing_file_fails_when_the_config_is_made(tmp_path):
    empty = write_phrasings(tmp_path / "empty.json", "")
    with pytest.raises(ControlPhrasingsError, match="is empty"):
        TrainConfig(data=["t.jsonl"], output_dir="run", control_share=0.3, control_phrasings=str(empty))
    # Off: the file is not read; one head alone with its own ranking part is fine.
    assert not TrainConfig(data=["t.jsonl"], output_dir="run", control_phrasings=str(empty)).control_enabled
    assert TrainConfig(data=["t.jsonl"], output_dir="run", control_share=0.3, mode="top-p", control_heads="top-p").control_enabled


def test_cli_names_the_flag_of_a_bad_control_setting(tmp_path):
    from autodeco.cli.train import train

    with pytest.raises(ValueError, match=r"control_share \(--control-share\) must be a share in \[0, 1\]"):
        train([str(tmp_path / "t.jsonl")], output=str(tmp_path / "run"), control_share=2.0)


# ---------------------------------------------------------------------------------------- pairing


def write_sums(path, count=8):
    rows = [{"prompt": f"What is {a} + {a + 3}?", "completion": f"{a} + {a + 3} = {2 * a + 3}."} for a in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def ascii_phrasings(tmp_path):
    """A version-1 phrasing file the tiny test tokenizer spells out (the built-in one holds French, German, ...)."""
    path = tmp_path / "ascii.json"
    path.write_text(json.dumps({"low": {"train": ["Be exact.", "No guessing."], "eval": ["Stay precise."]},
                                "high": {"train": ["Be wild.", "Surprise me."], "eval": ["Go creative."]}}))
    return load_phrasings(path)


def test_commanded_copy_keeps_the_completion_and_appends_the_command(tokenizer, tmp_path):
    examples, _ = build_training_set([write_sums(tmp_path / "t.jsonl")], tokenizer, max_length=128)
    pairs = CommandedExamples(tokenizer, examples, ascii_phrasings(tmp_path), share=1.0, seed=0, max_length=128)
    [(choice, commanded)] = pairs(0, 2)
    plain = examples[2]
    assert commanded.prompt == append_command(plain.prompt, choice.phrasing)
    assert commanded.labels[commanded.labels != -100].tolist() == plain.labels[plain.labels != -100].tolist()
    prompt_length = int((commanded.labels == -100).sum())
    rendered = "".join(tokenizer.convert_ids_to_tokens(commanded.input_ids[:prompt_length].tolist()))
    assert rendered == f"<u>{plain.prompt}<unk>{choice.phrasing}</s><a>"  # the newline is <unk> to this tokenizer
    assert pairs(0, 2)[0][1] is commanded  # tokenized once
    short = CommandedExamples(tokenizer, examples, ascii_phrasings(tmp_path), share=1.0, seed=0, max_length=20)
    assert short(0, 2) == []  # the commanded prompt does not fit: no pair
    both = CommandedExamples(tokenizer, examples, ascii_phrasings(tmp_path), share=1.0, seed=0, max_length=128, both=True)
    assert [choice.kind for choice, _ in both(0, 2)] == ["low", "high"]
    assert all(copy.labels[copy.labels != -100].tolist() == plain.labels[plain.labels != -100].tolist() for _, copy in both(0, 2))


@pytest.mark.parametrize("both", [False, True], ids=["one-command", "both-commands"])
def test_pairs_are_the_same_however_the_global_batch_is_split(tokenizer, tmp_path, both):
    examples, _ = build_training_set([write_sums(tmp_path / "t.jsonl")], tokenizer, max_length=128)
    pairs = CommandedExamples(tokenizer, examples, load_phrasings(), share=0.5, seed=3, max_length=128, both=both)
    items = [(0, index) for index in (5, 1, 7, 2, 0, 6)]
    whole = recipe.make_micro_batch(examples, items, tokenizer.pad_token_id, 3, "cpu", pairs)
    split = [recipe.make_micro_batch(examples, items[start : start + 2], tokenizer.pad_token_id, 3, "cpu", pairs)
             for start in (0, 2, 4)]

    def described(batch, offset):
        plain = batch["drop_draws"].shape[0]
        return [
            (offset + int(row), int(direction), batch["input_ids"][plain + copy][batch["attention_mask"][plain + copy].bool()].tolist())
            for copy, (row, direction) in enumerate(zip(batch["control_rows"], batch["control_directions"]))
        ]

    paired = len(set(whole["control_rows"].tolist()))
    assert 0 < paired < len(items)  # share 0.5 paired some of the six
    assert len(whole["control_rows"]) == paired * (2 if both else 1)
    if both:  # every paired row has one low and one high copy
        directions = {}
        for row, direction in zip(whole["control_rows"].tolist(), whole["control_directions"].tolist()):
            directions.setdefault(row, []).append(direction)
        assert all(sorted(values) == [-1.0, 1.0] for values in directions.values())
    assert described(whole, 0) == [pair for index, batch in enumerate(split) for pair in described(batch, 2 * index)]
    assert whole["input_ids"].shape[0] == len(items) + len(whole["control_rows"])
    assert whole["drop_draws"].shape == (len(items), whole["input_ids"].shape[1] - 1)


@pytest.mark.parametrize("scale, anchored", [("logit", False), ("probability", False), ("logit", True), ("bounded", True)])
def test_gradient_with_control_is_the_mean_over_pairs_added_to_the_paper_losses(
    tokenizer, tiny_chat_model_dir, tmp_path, scale, anchored
):
    """Four micro-batches of one give the gradient of the whole batch's paper losses + weight x mean ranking loss
    (+ anchor weight x the plain rows' mean anchor loss)."""
    from autodeco.model.modeling import AutoDecoForCausalLM

    examples, _ = build_training_set([write_sums(tmp_path / "t.jsonl")], tokenizer, max_length=128)
    config = TrainConfig(data=["unused"], output_dir="unused", control_share=0.7, control_margin=0.3, control_weight=2.0,
                         control_top_p_scale=scale, control_anchor="unused" if anchored else None, control_anchor_weight=0.5)
    pairs = CommandedExamples(tokenizer, examples, load_phrasings(), share=0.7, seed=0, max_length=128)
    model = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0)
    anchor = AutoDecoForCausalLM.from_base(model.llm, seed=1) if anchored else None  # other heads on the same base
    parameters = recipe.trainable_parameters(model)
    items = [(0, index) for index in (3, 0, 7, 5)]
    singles = [recipe.make_micro_batch(examples, [item], tokenizer.pad_token_id, 0, "cpu", pairs) for item in items]
    temperature_gradient, top_p_gradient, control_gradient, anchor_gradient, statistics = loss_step.accumulate_gradients(
        model, parameters, singles, config, anchor
    )
    values = dict(zip(loss_step.STATISTICS, statistics.tolist()))
    assert 1 <= values["control_pairs"] < 4 and control_gradient.abs().sum() > 0
    assert values["anchor_rows"] == (4 if anchored else 0) and (anchor_gradient.abs().sum() > 0) == anchored
    combined = loss_step.combine_gradients(temperature_gradient, values["kept_tokens"], top_p_gradient, values["top_p_tokens"],
                                        control_gradient, values["control_pairs"], anchor_gradient, values["anchor_rows"])

    whole = recipe.make_micro_batch(examples, items, tokenizer.pad_token_id, 0, "cpu", pairs)
    output = model(input_ids=whole["input_ids"], attention_mask=whole["attention_mask"])
    plain = len(items)
    labels = whole["labels"]
    loss = losses.temperature_loss(
        output.logits[:plain], output.temperature[:plain], labels[:plain], random_values=whole["drop_draws"]
    ) + losses.top_p_loss(output.logits[:plain], output.temperature[:plain], output.top_p[:plain], labels[:plain])
    rows, directions = whole["control_rows"], whole["control_directions"]
    top_p_logits = torch.log(output.top_p / (1 - output.top_p))
    top_p = {"logit": top_p_logits, "probability": output.top_p,
             "bounded": output.top_p.detach() + top_p_logits - top_p_logits.detach()}[scale]
    for values_ in (output.temperature, top_p):
        command_means = completion_means(values_[plain:], labels[plain:])
        plain_means = completion_means(values_[:plain], labels[:plain])[rows]
        margin = 0.3
        if scale == "bounded" and values_ is top_p:  # half the room left, at most 0.3
            margin = torch.where(directions < 0, plain_means, 1 - plain_means).detach().div(2).clamp(max=0.3)
        loss = loss + 2.0 * ranking_loss(command_means, plain_means, directions, margin=margin).mean()
    if anchored:
        with torch.no_grad():
            anchor_output = anchor(input_ids=whole["input_ids"][:plain], attention_mask=whole["attention_mask"][:plain])
        squared = (output.temperature[:plain] - anchor_output.temperature).square()
        anchor_top_p = torch.logit(anchor_output.top_p) if scale == "logit" else anchor_output.top_p
        squared = squared + (top_p[:plain] - anchor_top_p).square()
        loss = loss + 0.5 * completion_means(squared, labels[:plain]).mean()
    reference = torch.cat([gradient.reshape(-1) for gradient in torch.autograd.grad(loss, parameters)])
    torch.testing.assert_close(combined.float(), reference, rtol=1e-5, atol=1e-8)


# -------------------------------------------------------------------------------------- end to end


def test_tiny_end_to_end_train_with_control_then_control_eval(tiny_chat_model_dir, tmp_path, capsys):
    from autodeco.cli.control import control_eval
    from autodeco.model.checkpoint import read_checkpoint
    from autodeco.training.recipe import train_heads
    from autodeco.training.state import run_settings

    data = write_sums(tmp_path / "t.jsonl")
    common = {"data": [str(data)], "base": str(tiny_chat_model_dir), "max_steps": 4, "learning_rate": 1e-2,
              "warmup_steps": 0, "per_device_batch_size": 2, "gradient_accumulation_steps": 2, "log_every": 1,
              "save_every": 100}
    controlled = TrainConfig(**common, output_dir=str(tmp_path / "control"), control_share=0.5, control_margin=0.2)
    train_heads(controlled, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "control" / "log.jsonl").read_text().splitlines()]
    assert sum(row["control_pairs"] for row in rows) > 0
    for row in rows:
        assert row["loss"] == pytest.approx(row["temperature_loss"] + row["top_p_loss"] + row["control_loss"])
        assert row["control_loss"] == pytest.approx(row["control_temperature_loss"] + row["control_top_p_loss"])
        assert 0 <= row["control_temperature_moved"] <= 1
    recorded = read_checkpoint(tmp_path / "control" / "heads").config.training["settings"]
    assert recorded["control_share"] == 0.5 and len(recorded["control_phrasings_fingerprint"]) == 64
    plain = TrainConfig(**common, output_dir=str(tmp_path / "plain"))
    train_heads(plain, progress=False)
    assert "control_loss" not in json.loads((tmp_path / "plain" / "log.jsonl").read_text().splitlines()[0])
    assert not any(key.startswith("control") for key in run_settings(plain, 1))  # recorded as before the option
    assert "control_top_p_room" not in run_settings(controlled, 1)  # used only on the bounded scale
    assert run_settings(dataclasses.replace(controlled, control_top_p_scale="bounded"), 1)["control_top_p_room"] == 0.5

    output = tmp_path / "eval"
    result = control_eval(
        output=str(output), no_progress=True, heads=str(tmp_path / "control" / "heads"), questions=3, samples=2,
        max_new_tokens=4, batch_size=2, resamples=50, compare_heads=str(tmp_path / "plain" / "heads"),
    )
    assert {"control.json", "control.md", "control.png"} <= {path.name for path in output.iterdir()}
    stored = json.loads((output / "control.json").read_text())
    assert stored["num_questions"] == 3 and len(stored["questions"]) == 3
    question = stored["questions"][0]
    conditions = {"none", "low", "high", "neutral"}  # the built-in file has neutral eval families
    assert set(question["heads"]) == {"sampled", "greedy"} and set(question["heads"]["sampled"]) == conditions
    assert question["compare"] == {"sampled": {"none": question["compare"]["sampled"]["none"]}}
    assert question["commands"]["low"]["text"] in load_phrasings().eval["low"]  # evaluation uses unseen phrasings only
    for condition in conditions:
        sampled, greedy = question["heads"]["sampled"][condition], question["heads"]["greedy"][condition]
        assert 0 < sampled["temperature"] < 2 and sampled["tokens"] >= 2
        assert 1 <= sampled["distinct_answers"] <= 2
        assert 0 < greedy["temperature"] < 2 and greedy["tokens"] >= 1 and len(greedy["texts"]) == 1
    low = result["directions"]["low"]["temperature"]  # one source: the paper-table keys (sampled) stay
    assert low["moved"] + low["unchanged"] + low["against"] == pytest.approx(1.0)
    assert result["comparison"] is not None and "accuracy without a command" in result["goal"]["criteria"][-1]["criterion"]
    assert set(question["same_answer"]) == conditions and "token_ids" not in question["heads"]["sampled"]["none"]
    assert result["same_answer"]["generated_gap"] < 1e-4
    markdown = (output / "control.md").read_text()
    assert "| none (baseline) |" in markdown and "Goal check" in markdown and "same tokens" in markdown
    assert (output / "control.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "| arithmetic, greedy (N = 3) |" in printed and "goal met:" in printed


def _plain_means(heads, tokenizer, examples):
    """Teacher-forced completion means of log T and logit P of each example without a command."""
    from autodeco.model.modeling import AutoDecoForCausalLM
    from autodeco.data.tokens import collate

    model = AutoDecoForCausalLM.from_pretrained(heads).eval()
    batch = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return (completion_means(output.temperature.log(), batch["labels"]),
            completion_means(torch.logit(output.top_p.double()).float(), batch["labels"]))


def test_an_anchor_keeps_the_plain_values_near_its_own_while_control_trains(tiny_chat_model_dir, tokenizer, tmp_path):
    from autodeco.model.modeling import AutoDecoForCausalLM
    from autodeco.training.recipe import train_heads
    from autodeco.training.state import check_stored_settings, run_settings

    data = write_sums(tmp_path / "t.jsonl")
    examples, _ = build_training_set([data], tokenizer, max_length=128)
    AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=3).save_pretrained(tmp_path / "start")
    common = {"data": [str(data)], "base": str(tiny_chat_model_dir), "heads": str(tmp_path / "start"), "max_steps": 6,
              "learning_rate": 1e-2, "warmup_steps": 0, "per_device_batch_size": 4, "log_every": 1, "save_every": 100,
              "control_share": 1.0, "control_margin": 1.0, "control_temperature_scale": "log"}
    anchored = TrainConfig(**common, output_dir=str(tmp_path / "anchored"), control_anchor=str(tmp_path / "start"),
                           control_anchor_weight=100.0)
    for config in (TrainConfig(**common, output_dir=str(tmp_path / "free")), anchored):
        train_heads(config, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "anchored" / "log.jsonl").read_text().splitlines()]
    assert rows[0]["anchor_loss"] == pytest.approx(0.0, abs=1e-9)  # the run starts at the anchor
    assert all(row["anchor_loss"] > 0 for row in rows[1:])
    for row in rows:
        assert row["loss"] == pytest.approx(row["temperature_loss"] + row["top_p_loss"] + row["control_loss"] + row["anchor_loss"])
    start = _plain_means(tmp_path / "start", tokenizer, examples)
    drift = {}
    for name in ("free", "anchored"):
        trained = _plain_means(tmp_path / name / "heads", tokenizer, examples)
        drift[name] = sum(float((after - before).abs().mean()) for after, before in zip(trained, start))
    assert drift["anchored"] < 0.5 * drift["free"], drift

    from autodeco.common.fingerprint import tensors_fingerprint
    from autodeco.model.checkpoint import read_checkpoint

    recorded = run_settings(anchored, 1)["control_anchor_fingerprint"]
    assert recorded == tensors_fingerprint(read_checkpoint(tmp_path / "start").head_tensors)
    assert "control_anchor" not in run_settings(TrainConfig(**common, output_dir="x"), 1)  # recorded as before the option
    other = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=4)
    other.save_pretrained(tmp_path / "start")  # the same path now holds other heads: resuming is refused
    with pytest.raises(ValueError, match="control_anchor_fingerprint"):
        check_stored_settings(tmp_path / "anchored", run_settings(anchored, 1))


def test_an_anchor_without_a_head_this_run_trains_is_refused(tiny_chat_model_dir, tmp_path):
    from autodeco.model.modeling import AutoDecoForCausalLM

    model = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0)
    AutoDecoForCausalLM.from_base(model.llm, enable_top_p_head=False, seed=1).save_pretrained(tmp_path / "t-only")
    config = TrainConfig(data=["t.jsonl"], output_dir="run", control_share=1.0, control_anchor=str(tmp_path / "t-only"))
    with pytest.raises(ValueError, match=r"disable the top-p head that this run trains.*leave --control-anchor out"):
        recipe.load_anchor(config, model, "cpu")
    only_temperature = dataclasses.replace(config, mode="temperature", control_heads="temperature")
    model.config.enable_top_p_head = False
    anchor = recipe.load_anchor(only_temperature, model, "cpu")
    assert anchor.llm is model.llm and not any(parameter.requires_grad for parameter in anchor.temp_head.parameters())


def test_control_eval_pairs_runs_with_the_same_seed(tiny_chat_model_dir, tmp_path, monkeypatch):
    """Every prompt and mode of a batch of questions is answered with one seed (a paired comparison)."""
    from autodeco.evaluation import control

    seeds = []
    original = control._complete

    def record(model, tokenizer, batch, seed, setting, num_samples, max_new_tokens):
        seeds.append(seed)
        return original(model, tokenizer, batch, seed, setting, num_samples, max_new_tokens)

    monkeypatch.setattr(control, "_complete", record)
    from autodeco.model.modeling import AutoDecoForCausalLM

    heads = tmp_path / "heads"
    AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0).save_pretrained(heads)
    config = control.ControlEvalConfig(heads=str(heads), questions=3, samples=1, max_new_tokens=2, batch_size=2, resamples=10)
    control.control_evaluation(config, progress=False)
    passes = 2 * len(control.run_conditions(list(control.eval_families(load_phrasings()))))  # modes x prompts
    assert len(seeds) == 2 * passes and seeds[0] != seeds[passes]
    assert len(set(seeds[:passes])) == 1 and len(set(seeds[passes:])) == 1


def test_control_eval_resumes_from_its_recorded_batches(tiny_chat_model_dir, tmp_path, monkeypatch):
    """A killed run keeps its finished batches; a rerun answers only the rest; other settings are refused."""
    from autodeco.evaluation import control
    from autodeco.model.modeling import AutoDecoForCausalLM

    heads = tmp_path / "heads"
    AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0).save_pretrained(heads)
    config = control.ControlEvalConfig(heads=str(heads), questions=3, samples=2, max_new_tokens=3, batch_size=2, resamples=10)
    output = tmp_path / "run"
    complete_run = control.control_evaluation(config, output=tmp_path / "whole", progress=False)
    passes = 2 * len(control.run_conditions(list(control.eval_families(load_phrasings()))))  # modes x prompts

    calls, kill_after = [], [passes + 1]
    original = control._complete

    def killed_after_one_more_than_a_batch(*args):
        if len(calls) == kill_after[0]:
            raise RuntimeError("killed")
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(control, "_complete", killed_after_one_more_than_a_batch)
    with pytest.raises(RuntimeError, match="killed"):
        control.control_evaluation(config, output=output, progress=False)
    # the first batch's prompts in both modes and its teacher-forced pass, then 1 prompt of the second batch
    assert len((output / control.PROGRESS_FILE).read_text().splitlines()) == passes + 2

    calls.clear()
    kill_after[0] = None
    resumed = control.control_evaluation(config, output=output, progress=False)
    assert len(calls) == passes - 1  # only the second batch's prompts not yet recorded
    assert resumed["questions"] == complete_run["questions"]  # the same answers as an uninterrupted run

    changed = dataclasses.replace(config, samples=3)
    with pytest.raises(ValueError, match=r"different configuration \(samples: 2 there, 3 now\).*--overwrite"):
        control.control_evaluation(changed, output=output, progress=False)
    calls.clear()
    control.control_evaluation(changed, output=output, overwrite=True, progress=False)
    assert len(calls) == 2 * passes


def test_control_eval_teacher_forces_the_plain_answers_with_the_values_generation_used(tiny_chat_model_dir, tmp_path):
    """The same-answer pass: under the plain prompt it reproduces the generated means; a command changes them."""
    from autodeco.evaluation import control
    from autodeco.model.modeling import AutoDecoForCausalLM

    heads = tmp_path / "heads"
    AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=3).save_pretrained(heads)
    config = control.ControlEvalConfig(heads=str(heads), questions=3, samples=3, max_new_tokens=6, batch_size=2, resamples=10)
    result = control.control_evaluation(config, progress=False)
    for question in result["questions"]:
        generated, forced = question["heads"]["sampled"]["none"], question["same_answer"]["none"]
        assert forced["tokens"] == generated["tokens"]  # every answer token, EOS included
        for measure in ("temperature", "top_p"):
            assert forced[measure] == pytest.approx(generated[measure], rel=1e-4, abs=1e-5)
        assert question["same_answer"]["low"]["tokens"] == generated["tokens"]  # the same tokens after another prompt
        assert question["same_answer"]["low"]["temperature"] != pytest.approx(forced["temperature"], rel=1e-6, abs=1e-7)
    same = result["same_answer"]
    assert same["generated_gap"] < 1e-4
    for kind in ("low", "high"):
        entry = same[kind]["temperature"]
        assert entry["moved"] + entry["unchanged"] + entry["against"] == pytest.approx(1.0)
        assert entry["difference"]["mean"] == pytest.approx(entry["with"] - entry["without"], abs=1e-9)


def test_teacher_forced_means_pool_the_answer_tokens_of_unequal_answers(tiny_chat_model_dir):
    """Right-padded answers of different lengths: the mean is over their tokens only, pooled."""
    from autodeco.evaluation.control import same_answer_means as teacher_forced_means
    from autodeco.model.base_model import load_tokenizer
    from autodeco.model.modeling import AutoDecoForCausalLM

    model = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=1).eval()
    tokenizer = load_tokenizer(str(tiny_chat_model_dir))
    answers = [[5, 6, 7, 8], [9, 10]]
    pooled = teacher_forced_means(model, tokenizer, "What is 1 + 1?", answers)
    alone = [teacher_forced_means(model, tokenizer, "What is 1 + 1?", [answer]) for answer in answers]
    assert pooled["tokens"] == 6 and [part["tokens"] for part in alone] == [4, 2]
    for measure in ("temperature", "top_p"):
        expected = (4 * alone[0][measure] + 2 * alone[1][measure]) / 6
        assert pooled[measure] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert teacher_forced_means(model, tokenizer, "What is 1 + 1?", [])["tokens"] == 0


@pytest.mark.parametrize("overrides, message", [
    ({"questions": 0}, r"questions must be an integer >= 1, got 0"),
    ({"samples": 0}, r"samples must be an integer >= 1, got 0"),
    ({"scorer": "fuzzy"}, r"scorer must be one of"),
])
def test_control_eval_settings_are_validated(overrides, message):
    from autodeco.evaluation.control import ControlEvalConfig

    with pytest.raises(ValueError, match=message):
        ControlEvalConfig(**overrides)


def test_control_eval_refuses_a_bad_phrasing_file_before_loading_a_model(tmp_path, monkeypatch):
    from autodeco.evaluation import control

    monkeypatch.setattr(control, "_load", lambda *args, **kwargs: pytest.fail("a model was loaded"))
    bad = write_phrasings(tmp_path / "bad.json", "{}")
    with pytest.raises(ControlPhrasingsError, match="'low' must be an object"):
        control.control_evaluation(control.ControlEvalConfig(phrasings=str(bad)), progress=False)


def test_shipped_heads_are_named_and_unknown_names_listed():
    from autodeco.model.shipped import resolve_heads_reference

    assert (resolve_heads_reference("shipped:smollm2-135m-instruct") / "config.json").is_file()
    with pytest.raises(ValueError, match=r"no shipped heads named 'nope'.*shipped:smollm2-135m-instruct"):
        resolve_heads_reference("shipped:nope")


def test_distinct_measures_and_moved_share_on_hand_built_values():
    from autodeco.evaluation.control_summary import distinct_answers, distinct_ngram_ratio, moved_share

    assert distinct_ngram_ratio([[1, 2, 1, 2], [1, 2]]) == pytest.approx(2 / 4)  # (1,2) (2,1) (1,2) (1,2)
    assert distinct_ngram_ratio([[5]]) == 0.0
    assert distinct_answers(["7", "7", "7"]) == 1
    shares = moved_share({"a": 0.7, "b": 0.7, "c": 0.7, "d": 0.7}, {"a": 0.8, "b": 0.9, "c": 0.7, "d": 0.6}, direction=1)
    assert shares == {"moved": 0.5, "unchanged": 0.25, "against": 0.25, "questions": 4}
