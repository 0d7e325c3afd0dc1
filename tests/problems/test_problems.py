"""Generated arithmetic problems and the dataset loaders (JSONL formats, names, bad input)."""

from __future__ import annotations

import ast
import collections
import importlib.util
import json
import operator
import re
from pathlib import Path

import pytest

from autodeco.problems import (
    DATASET_NAMES,
    DEFAULT_LEVELS,
    LEVELS,
    TEMPLATES,
    DataError,
    Problem,
    generate_problems,
    load_problems,
)
from autodeco.problems.arithmetic import DEFAULT_COUNTS, generate_items, split_of
from autodeco.problems.datasets import content_id, parse_hub_id, record_format

DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA_DIR.is_dir(), reason=f"benchmark data folder {DATA_DIR} is absent")
BOXED_SUFFIX = "\nMake sure you output the final answer within \\boxed{}."


def evaluate(expression: str) -> int:
    """Evaluate + - * / on integer literals (nothing else), exactly."""
    operations = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}

    def walk(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in operations:
            return operations[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            numerator, denominator = walk(node.left), walk(node.right)
            assert numerator % denominator == 0, f"inexact division in {expression}"
            return numerator // denominator
        raise AssertionError(f"unexpected syntax in {expression!r}")

    return walk(ast.parse(expression, mode="eval").body)


def numbers_in(text: str) -> list[int]:
    return sorted(int(number) for number in re.findall(r"\d+", text))


# Arithmetic generator -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def all_level_items():
    return generate_items("train", 1000, seed=3, levels=LEVELS)


def test_answers_equal_the_expression_behind_the_text(all_level_items):
    for item in all_level_items:
        assert item.answer == evaluate(item.expression) >= 0, item
        assert numbers_in(item.question) == numbers_in(item.expression), item  # the text shows exactly these numbers


def test_one_operation_levels_say_the_operation_they_compute(all_level_items):
    words = {"+": ("+", "plus", "finds"), "-": ("-", "minus", "gives away"), "*": ("*", "times", "in each box")}
    for item in all_level_items:
        if item.level <= 3:
            a, symbol, b = item.expression.split()
            assert any(word in item.question for word in words[symbol]), item
            assert item.question.index(a) < item.question.rindex(b), item  # operands in order
    longest = collections.defaultdict(int)
    for item in all_level_items:
        longest[item.level] = max(longest[item.level], *map(len, re.findall(r"\d+", item.expression)))
    assert (longest[1], longest[2], longest[3]) == (1, 1, 2)
    level_1_symbols = {item.expression.split()[1] for item in all_level_items if item.level == 1}
    assert level_1_symbols == {"+"}


def test_problems_carry_the_items_answers():
    items = generate_items("test", 40, seed=5, levels=LEVELS)
    problems = generate_problems("test", 40, seed=5, levels=LEVELS)
    assert [problem.answer for problem in problems] == [str(item.answer) for item in items]
    assert [problem.question for problem in problems] == [item.question for item in items]
    assert [problem.difficulty for problem in problems] == [item.level for item in items]
    assert problems[7].id == "arithmetic/test/7"
    assert {problem.source for problem in problems} == {"arithmetic"}
    assert problems[0].prompt() == problems[0].question + BOXED_SUFFIX


def test_same_seed_same_problems_and_shorter_lists_are_prefixes():
    first = generate_problems("train", 300, seed=11)
    assert generate_problems("train", 300, seed=11) == first
    assert generate_problems("train", 120, seed=11) == first[:120]
    other = generate_problems("train", 300, seed=12)
    assert sum(a.question == b.question for a, b in zip(first, other, strict=True)) < 30


def test_splits_are_disjoint_and_free_of_duplicates():
    train = generate_items("train", 6000, seed=0, levels=LEVELS)
    test = generate_items("test", 2000, seed=1, levels=LEVELS)
    train_questions = [item.question for item in train]
    test_questions = [item.question for item in test]
    assert len(set(train_questions)) == len(train_questions)
    assert len(set(test_questions)) == len(test_questions)
    assert not set(train_questions) & set(test_questions)
    assert {split_of(question) for question in train_questions} == {"train"}
    assert {split_of(question) for question in test_questions} == {"test"}


def test_levels_cycle_in_the_given_order():
    assert [item.level for item in generate_items("test", 7, levels=(2, 5))] == [2, 5, 2, 5, 2, 5, 2]
    assert {item.level for item in generate_items("train", 50, levels=(1,))} == {1}
    default_mix = collections.Counter(problem.difficulty for problem in generate_problems("test", 200))
    assert default_mix == {level: 50 for level in DEFAULT_LEVELS}
    assert DEFAULT_LEVELS == (1, 2, 3, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "validation"}, "split must be one of .* got 'validation'"),
        ({"count": 0}, "count must be an integer >= 1, got 0"),
        ({"levels": (1, 6)}, r"unknown: \[6\]"),
        ({"levels": ()}, "levels must be a non-empty"),
        ({"levels": 3}, "levels must be a non-empty"),
    ],
)
def test_generator_rejects_bad_arguments(kwargs, message):
    arguments = {"split": "test", "count": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_problems(arguments.pop("split"), arguments.pop("count"), **arguments)


def test_load_arithmetic_defaults_and_limit():
    problems = load_problems("arithmetic", split="test")
    assert len(problems) == DEFAULT_COUNTS["test"] == 200
    assert load_problems("arithmetic", split="test", limit=10) == problems[:10]
    assert {p.difficulty for p in load_problems("arithmetic", split="train", limit=30, levels=(3,))} == {3}
    assert load_problems("arithmetic", seed=4, limit=5) == generate_problems("test", 5, seed=4)


# JSONL files ----------------------------------------------------------------------------------


def cid(name: str, question: str, answer: str) -> str:
    """The content id of the first problem with this question and answer in file ``name``."""
    return content_id(name, question, answer, {})


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_gsm8k_format(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [
        {"question": "Q1?", "answer": "It is 2 + 2 = <<2+2=4>>4.\n#### 4"},
        {"question": "Q2?", "answer": "So 1,000 + 234 = 1,234\n#### 1,234"},
    ])  # fmt: skip
    problems = load_problems(str(path))
    assert [(p.id, p.question, p.answer, p.template, p.difficulty) for p in problems] == [
        (cid("g.jsonl", "Q1?", "4"), "Q1?", "4", "gsm8k", None),
        (cid("g.jsonl", "Q2?", "1234"), "Q2?", "1234", "gsm8k", None),
    ]
    assert problems[0].source == str(path)
    assert problems[0].prompt() == "Q1?" + BOXED_SUFFIX


def test_competition_format_with_string_and_int_ground_truths(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"problem": "P1", "gt": 70}, {"problem": "P2", "gt": "2^{99}"}])
    problems = load_problems(str(path))
    assert [(p.answer, p.template) for p in problems] == [("70", "competition"), ("2^{99}", "competition")]


def test_math_format_uses_level_and_unique_id(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [
        {"problem": "A", "solution": "...", "answer": "\\frac{1}{2}", "level": 2, "unique_id": "test/algebra/1.json"},
        {"problem": "B", "answer": "3", "level": "Level 5"},
        {"problem": "C", "answer": "4", "level": 1},
    ])  # fmt: skip
    problems = load_problems(str(path))
    assert [(p.id, p.answer, p.template, p.difficulty) for p in problems] == [
        ("test/algebra/1.json", "\\frac{1}{2}", "math", 2),
        (cid("m.jsonl", "B", "3"), "3", "math", 5),
        (cid("m.jsonl", "C", "4"), "4", "math", 1),
    ]
    assert [p.question for p in load_problems(str(path), levels=(1, 2))] == ["A", "C"]
    assert [p.question for p in load_problems(str(path), levels=(1, 2), limit=1)] == ["A"]
    with pytest.raises(DataError, match=r"no problems at levels \(4,\); its levels are \[1, 2, 5\]"):
        load_problems(str(path), levels=(4,))


def test_generic_format_and_blank_lines(tmp_path):
    lines = ["", {"prompt": "Say 3", "ground_truth": 3}, "   ", {"prompt": "Say 4", "ground_truth": "4"}]
    path = write_jsonl(tmp_path / "p.jsonl", lines)
    problems = load_problems(str(path))
    assert [(p.id, p.answer, p.template) for p in problems] == [
        (cid("p.jsonl", "Say 3", "3"), "3", "generic"),
        (cid("p.jsonl", "Say 4", "4"), "4", "generic"),
    ]


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"question": "q", "answer": "x\n#### 1"}, "gsm8k"),
        ({"question": "q", "answer": "1"}, "generic"),
        ({"problem": "p", "gt": 1}, "competition"),
        ({"problem": "p", "answer": "1"}, "math"),
        ({"prompt": "p", "gt": "1"}, "generic"),
        ({"text": "p", "label": "1"}, None),
    ],
)
def test_record_format(record, expected):
    assert record_format(record) == expected


def test_malformed_line_stops_with_file_and_line(tmp_path):
    lines = [{"problem": "P1", "gt": 1}, '{"problem": "P2", "gt": ', {"problem": "P3", "gt": 3}]
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as raised:
        load_problems(str(path))
    message = str(raised.value)
    assert str(path) in message and "line 2" in message and "not valid JSON" in message
    assert "on_bad_line='skip'" in message and '{"problem", "gt"}' in message


def test_malformed_lines_are_skipped_with_one_warning(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"problem": "P1", "gt": 1}, "{oops", {"problem": "P3"}, [1, 2], {"problem": "P5", "gt": 5},
    ])  # fmt: skip
    expected = r"skipped 3 bad line\(s\) in .*bad.jsonl; the first is line 2: not valid JSON"
    with pytest.warns(UserWarning, match=expected) as caught:
        problems = load_problems(str(path), on_bad_line="skip")
    assert len(caught) == 1
    assert [(p.id, p.answer) for p in problems] == [(cid("bad.jsonl", "P1", "1"), "1"), (cid("bad.jsonl", "P5", "5"), "5")]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (
            [{"problem": "P1", "gt": 1}, {"problem": "P2"}],
            r"line 2: record has the fields \['problem'\].*competition format",
        ),
        (
            [{"question": "Q", "answer": "x\n#### 1"}, {"question": "Q2", "answer": "no marker"}],
            "line 2: GSM8K answer has no '####",
        ),
        ([{"text": "T", "label": 1}], r"line 1: record has the fields \['label', 'text'\], which fit no known format"),
        ([{"problem": "P", "gt": [1, 2]}], "line 1: field 'gt' must be a string or a number"),
        ([{"problem": "", "gt": 1}], "line 1: field 'problem' must be a non-empty string"),
    ],
)
def test_records_missing_their_fields_are_reported(tmp_path, records, message):
    path = write_jsonl(tmp_path / "f.jsonl", records)
    with pytest.raises(DataError, match=message):
        load_problems(str(path))


MIXED_FORMATS = [
    # (records, line refused, the format of that line, the file's format)
    ([{"question": "Q1", "answer": "2"}, {"question": "Q2", "answer": "x\n#### 3"}], 2, "gsm8k", "generic"),
    ([{"prompt": "Q1", "gt": "2"}, {"prompt": "Q0", "gt": 1}, {"question": "Q2", "answer": "x #### 3"}], 3, "gsm8k",
     "generic"),
    ([{"question": "Q1", "answer": "2"}, {"problem": "P2", "answer": "3", "level": 2}], 2, "math", "generic"),
    ([{"question": "Q1", "answer": "2"}, {"problem": "P2", "gt": 3}], 2, "competition", "generic"),
    ([{"problem": "P1", "gt": 1}, {"problem": "P2", "gt": 2, "answer": "x\n#### 3"}], None, None, None),
]


@pytest.mark.parametrize(("records", "line", "own", "first"), MIXED_FORMATS)
def test_a_record_in_another_format_than_the_files_is_refused_naming_its_line(tmp_path, records, line, own, first):
    path = write_jsonl(tmp_path / "mixed.jsonl", records)
    if line is None:  # a competition record may carry other fields: still competition format
        assert [problem.answer for problem in load_problems(str(path))] == ["1", "2"]
        return
    with pytest.raises(DataError, match=rf"mixed.jsonl, line {line}: this record is in {own} format but the file's "
                                        rf"first record \(line 1\) is in {first} format.*a file of their own"):
        load_problems(str(path))  # before: accepted, with "x\n#### 3" as a ground truth
    with pytest.warns(UserWarning, match=rf"skipped 1 bad line\(s\).*line {line}"):
        problems = load_problems(str(path), on_bad_line="skip")
    assert all("####" not in problem.answer for problem in problems)


def test_the_same_gsm8k_record_gives_the_same_answer_wherever_it_is(tmp_path):
    gsm8k = {"question": "Q2", "answer": "x\n#### 3"}
    alone = load_problems(str(write_jsonl(tmp_path / "alone.jsonl", [gsm8k])))
    after_gsm8k = load_problems(str(write_jsonl(tmp_path / "g.jsonl", [{"question": "Q1", "answer": "#### 1"}, gsm8k])))
    assert alone[0].answer == after_gsm8k[1].answer == "3"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"problem": "P", "gt": 1e400}', r"field 'gt' is inf, not a finite number.*\"1e400\""),
        ('{"problem": "P", "gt": -1e999}', "field 'gt' is -inf, not a finite number"),
        ('{"problem": "P", "gt": NaN}', "field 'gt' is nan, not a finite number"),
        ('{"problem": "P", "gt": Infinity}', "field 'gt' is inf, not a finite number"),
        ('{"question": "Q", "answer": 1e400}', "field 'answer' is inf"),
        ('{"prompt": "Q", "ground_truth": -Infinity}', "field 'ground_truth' is -inf"),
        ('{"problem": "P", "gt": "nan"}', r"the ground truth \('gt'\) is 'nan'.*\\infty"),
        ('{"problem": "P", "gt": " Infinity "}', r"the ground truth \('gt'\) is 'Infinity'"),
        ('{"problem": "P", "answer": "-inf"}', r"the ground truth \('answer'\) is '-inf'"),
        ('{"question": "Q", "answer": "so x\\n#### inf"}', r"the ground truth \('answer'\) is 'inf'"),
    ],
)
def test_non_finite_ground_truths_are_refused_naming_the_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "inf.jsonl", ["", line])
    with pytest.raises(DataError, match=rf"inf.jsonl, line 2: {message}"):
        load_problems(str(path))  # before: accepted with the ground truth "inf" or "nan"


def test_finite_numbers_and_words_near_infinity_stay_ground_truths(tmp_path):
    records = [{"problem": "A", "gt": 70}, {"problem": "B", "gt": 2.5}, {"problem": "C", "gt": "1e400"},
               {"problem": "D", "gt": "\\infty"}, {"problem": "E", "gt": "information"}, {"problem": "F", "gt": -3},
               {"problem": "G", "gt": 10**30}]
    path = write_jsonl(tmp_path / "ok.jsonl", records)
    assert [problem.answer for problem in load_problems(str(path))] == [
        "70", "2.5", "1e400", "\\infty", "information", "-3", str(10**30)
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1, 2]", "expected a JSON object .*, got a JSON array"),
        ('"a question"', "expected a JSON object .*, got a JSON string"),
        ("42", "expected a JSON object .*, got a JSON number"),
        ("null", "expected a JSON object .*, got a JSON null"),
        ('{"question": 5, "answer": "1"}', "field 'question' must be a non-empty string, got 5"),
        ('{"question": ["Q"], "answer": "1"}', r"field 'question' must be a non-empty string, got \['Q'\]"),
        ('{"problem": "P", "gt": {"value": 1}}', "field 'gt' must be a string or a number"),
        ('{"problem": "P", "gt": true}', "field 'gt' must be a string or a number, got True"),
        ('{"problem": "P", "gt": null}', "field 'gt' must be a string or a number, got None"),
        ('{"problem": "P", "gt": "  "}', "field 'gt' is empty"),
        ('{"question": "Q"}', r"record has the fields \['question'\], which fit no known format"),
        ('{"problem": "P", "gt": ' + "[" * 100_000 + "]" * 100_000 + "}", "JSON nested too deeply"),
        ('{"problem": "P", "gt": ' + "9" * 5000 + "}", "JSON that cannot be read .*4300 digits"),
        ('{"problem": "P", "gt": 1', "not valid JSON"),
    ],
)
def test_bad_records_are_refused_naming_the_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [line])
    with pytest.raises(DataError, match=rf"bad.jsonl, line 1: {message}"):
        load_problems(str(path))


def test_a_byte_order_mark_and_windows_line_ends_are_read(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"problem": "P1", "gt": 1}\r\n\r\n{"problem": "P2", "gt": "2"}\r\n')
    assert [problem.answer for problem in load_problems(str(path))] == ["1", "2"]


def test_a_repeated_unique_id_gets_a_suffix(tmp_path):
    records = [{"problem": "A", "answer": "1", "unique_id": "u"}, {"problem": "B", "answer": "2", "unique_id": "u"}]
    problems = load_problems(str(write_jsonl(tmp_path / "m.jsonl", records)))
    assert [problem.id for problem in problems] == ["u", "u#2"]


def test_empty_files_are_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl holds no problems"):
        load_problems(str(empty))
    only_bad = write_jsonl(tmp_path / "only_bad.jsonl", ["{", "}"])
    with pytest.warns(UserWarning, match="skipped 2"), pytest.raises(DataError, match="holds no problems"):
        load_problems(str(only_bad), on_bad_line="skip")


# Names, data folders and the hub ---------------------------------------------------------------


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'gsm9k'") as raised:
        load_problems("gsm9k")
    assert all(name in str(raised.value) for name in DATASET_NAMES)
    with pytest.raises(ValueError, match="not an existing file"):
        load_problems("missing/file.jsonl")


def test_named_dataset_without_a_data_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("AUTODECO_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="AUTODECO_DATA_DIR is not set.*autodeco\\[datasets\\]"):
        load_problems("aime25")
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "aime25.jsonl"))):
        load_problems("aime25", data_dir=tmp_path)


def test_named_dataset_from_the_environment_variable(monkeypatch, tmp_path):
    write_jsonl(tmp_path / "gsm8k_train.jsonl", [{"question": "Q", "answer": "#### 7"}])
    monkeypatch.setenv("AUTODECO_DATA_DIR", str(tmp_path))
    [problem] = load_problems("gsm8k", split="train")
    assert (problem.id, problem.source, problem.answer) == (cid("gsm8k_train.jsonl", "Q", "7"), "gsm8k", "7")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "aime25", "split": "train"}, "dataset 'aime25' has the splits \\('test',\\), got split='train'"),
        ({"limit": 0}, "limit must be None or an integer >= 1, got 0"),
        ({"limit": 2.5}, "got 2.5"),
        ({"on_bad_line": "ignore"}, "on_bad_line must be one of \\('stop', 'skip'\\), got 'ignore'"),
        ({"levels": 2}, "levels must be None or a non-empty tuple"),
        ({"source": "arithmetic", "split": "dev"}, "got 'dev'"),
        ({"source": ""}, "source must be"),
    ],
)
def test_load_problems_rejects_bad_arguments(tmp_path, kwargs, message):
    arguments = {"source": "gsm8k", "data_dir": tmp_path, **kwargs}
    with pytest.raises(ValueError, match=message):
        load_problems(arguments.pop("source"), **arguments)


def test_levels_on_a_dataset_without_levels(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"problem": "P", "gt": 1}])
    with pytest.raises(ValueError, match="needs problems with levels"):
        load_problems(str(path), levels=(1,))


def test_parse_hub_id():
    assert parse_hub_id("hf:openai/gsm8k:main@train") == ("openai/gsm8k", "main", "train")
    assert parse_hub_id("hf:HuggingFaceH4/MATH-500", "test") == ("HuggingFaceH4/MATH-500", None, "test")
    with pytest.raises(ValueError, match="owner/name"):
        parse_hub_id("hf:gsm8k")


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="the datasets package is installed")
def test_hub_source_without_the_datasets_package():
    with pytest.raises(ImportError, match=r"pip install 'autodeco\[datasets\]'.*") as raised:
        load_problems("hf:openai/gsm8k:main")
    assert "network" in str(raised.value)


def test_problem_validates_template_and_answer():
    assert set(TEMPLATES) >= {"arithmetic", "gsm8k", "math", "competition", "generic"}
    with pytest.raises(ValueError, match="got 'chat'"):
        Problem("x:1", "Q", "1", "x", "chat")
    with pytest.raises(TypeError, match="answer must be a str"):
        Problem("x:1", "Q", 1, "x", "math")
    question_with_braces = Problem("x:1", "Is {a} a set?", "yes", "x", "generic")
    assert question_with_braces.prompt() == "Is {a} a set?" + BOXED_SUFFIX


# The real benchmark files -----------------------------------------------------------------------


@needs_data
def test_real_benchmark_files():
    counts = {"gsm8k": 1319, "math500": 500, "aime24": 30, "aime25": 30, "hmmt25": 30, "brumo25": 30, "beyondaime": 100}
    for name, count in counts.items():
        problems = load_problems(name, data_dir=DATA_DIR)
        assert len(problems) == count, name
        assert len({problem.id for problem in problems}) == count, name
        assert all(isinstance(problem.answer, str) and problem.answer for problem in problems), name
    aime25 = load_problems("aime25", data_dir=DATA_DIR)
    assert (aime25[0].answer, aime25[0].template, aime25[0].id) == ("70", "competition", cid("aime25.jsonl", aime25[0].question, "70"))
    gsm8k = load_problems("gsm8k", data_dir=DATA_DIR)
    assert gsm8k[0].answer == "18" and all("," not in problem.answer for problem in gsm8k)
    assert len(load_problems("gsm8k", split="train", data_dir=DATA_DIR)) == 7473
    math500 = load_problems("math500", data_dir=DATA_DIR)
    assert {problem.difficulty for problem in math500} == {1, 2, 3, 4, 5}
    assert math500[0].id.startswith("test/") and math500[0].template == "math"
    easy = load_problems("math500", data_dir=DATA_DIR, levels=(1, 2))
    assert len(easy) == sum(problem.difficulty in (1, 2) for problem in math500)


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        (['{"question": "Q1", "answer": "2"}', '{"question": "Q2", "answer": "x\\n#### 3"}'],
         "data.jsonl, line 2: this record is in gsm8k format"),
        (['{"problem": "P", "gt": 1e400}'], "data.jsonl, line 1: field 'gt' is inf, not a finite number"),
        (['{"problem": "P", "gt": NaN}'], "data.jsonl, line 1: field 'gt' is nan, not a finite number"),
    ],
)
def test_the_cli_refuses_bad_data_in_one_line(lines, says, tmp_path, capsys):
    from autodeco.cli import main

    data = write_jsonl(tmp_path / "data.jsonl", lines)
    argv = ["sample", "--dataset", str(data), "--base", str(tmp_path / "no-model"), "--output", str(tmp_path / "run")]
    assert main(argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("autodeco: error: ")]
    assert len(errors) == 1 and says in errors[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written
