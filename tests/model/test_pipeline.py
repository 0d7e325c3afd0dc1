"""``transformers.pipeline("text-generation", ...)`` decodes dynamically: the same tokens as ``model.generate``, seed for seed."""

import threading

import pytest
import torch
import transformers

from autodeco.model.modeling import AutoDecoForCausalLM

PROMPT = "1 + 1 ="
CHAT = [{"role": "user", "content": "What is 2 + 3?"}]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def model(tiny_chat_model_dir):
    return AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0)


@pytest.fixture(scope="module")
def pipe(model, tokenizer):
    return transformers.pipeline("text-generation", model=model, tokenizer=tokenizer)


def _generate(model, encoded, seed: int, **kwargs):
    torch.manual_seed(seed)
    return model.generate(encoded.input_ids, encoded.attention_mask, max_new_tokens=NEW_TOKENS, **kwargs)


def _pipe(pipe, inputs, seed: int, **kwargs):
    torch.manual_seed(seed)
    return pipe(inputs, max_new_tokens=NEW_TOKENS, **kwargs)


def _decode(tokenizer, token_ids) -> str:
    """Decoded as the pipeline decodes generated text."""
    return tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)


def _prompt(tokenizer):
    return tokenizer(PROMPT, return_tensors="pt", add_special_tokens=False)


@pytest.mark.parametrize(
    "sampling", [{}, {"temperature": 0.5, "top_p": 0.8}, {"temperature": 1.5}, {"do_sample": False}],
    ids=["heads", "multipliers", "hotter", "greedy"],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_pipeline_samples_exactly_what_generate_samples(pipe, model, tokenizer, sampling, seed):
    expected = _generate(model, _prompt(tokenizer), seed, **sampling)
    [record] = _pipe(pipe, PROMPT, seed, return_tensors=True, **sampling)
    assert record["generated_token_ids"] == expected[0].tolist()


def test_pipeline_defaults_are_the_models_not_the_pipelines(pipe):
    """The pipeline's own default (temperature 0.7, a multiplier here) does not apply: only what the caller passes."""
    assert "'model': 'AutoDecoForCausalLM', 'dtype': 'float32'" in repr(pipe)
    assert pipe.generation_config.temperature is None and pipe.generation_config.top_k is None
    assert pipe.generation_config.do_sample is None  # generate() samples with the heads' values by default


def test_chat_messages_decode_like_generate_on_the_chat_template(pipe, model, tokenizer):
    encoded = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    expected = _generate(model, encoded, seed=2)
    [record] = _pipe(pipe, CHAT, seed=2)
    messages = record["generated_text"]
    assert messages[:-1] == CHAT and messages[-1]["role"] == "assistant"
    new_tokens = expected[0, encoded.input_ids.shape[1]:]
    assert messages[-1]["content"] == _decode(tokenizer, new_tokens)


def test_several_sequences_and_new_text_only(pipe, model, tokenizer):
    encoded = _prompt(tokenizer)
    expected = _generate(model, encoded, seed=3, num_return_sequences=3)
    records = _pipe(pipe, PROMPT, seed=3, num_return_sequences=3, return_full_text=False)
    assert [record["generated_text"] for record in records] == [
        _decode(tokenizer, row[encoded.input_ids.shape[1]:]) for row in expected
    ]
    as_tokens = _pipe(pipe, PROMPT, seed=3, num_return_sequences=3, return_tensors=True)
    assert [record["generated_token_ids"] for record in as_tokens] == expected.tolist()


def test_streamers_see_the_tokens_the_pipeline_returns(pipe, tokenizer, capsys):
    [plain] = _pipe(pipe, PROMPT, seed=4, return_full_text=False)
    streamer = transformers.TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    results = []
    worker = threading.Thread(target=lambda: results.extend(_pipe(pipe, PROMPT, seed=4, streamer=streamer,
                                                                   return_full_text=False)))
    worker.start()
    streamed = "".join(streamer)
    worker.join()
    assert streamed == results[0]["generated_text"] == plain["generated_text"]
    capsys.readouterr()
    _pipe(pipe, PROMPT, seed=4, streamer=transformers.TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True))
    assert capsys.readouterr().out.strip() == plain["generated_text"].strip()


def test_per_token_temperature_and_top_p_come_back_with_return_dict_in_generate(pipe, model, tokenizer):
    expected = _generate(model, _prompt(tokenizer), seed=5, return_dict_in_generate=True)
    [record] = _pipe(pipe, PROMPT, seed=5, return_dict_in_generate=True, return_full_text=False)
    new_tokens = expected.sequences[0, _prompt(tokenizer).input_ids.shape[1]:]
    assert record["generated_text"] == _decode(tokenizer, new_tokens)
    # transformers' pipeline keeps a leading axis of one (the prompt's sequences): [0] is the token list
    temperatures, top_ps = torch.tensor(record["temperatures"][0]), torch.tensor(record["top_ps"][0])
    torch.testing.assert_close(temperatures, expected.temperatures[0], rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(top_ps, expected.top_ps[0], rtol=0, atol=0, equal_nan=True)


def test_several_sequences_drop_the_per_token_values_as_documented(pipe):
    """transformers' pipeline splits extra outputs only with one sequence per prompt (README: call generate then)."""
    records = _pipe(pipe, PROMPT, seed=5, return_dict_in_generate=True, num_return_sequences=2)
    assert len(records) == 2 and not any("temperatures" in record for record in records)


def test_pipeline_from_a_heads_folder_through_the_auto_classes(tmp_path, model, pipe, tiny_chat_model_dir):
    model.save_pretrained(tmp_path / "heads")
    from_folder = transformers.pipeline("text-generation", model=str(tmp_path / "heads"), tokenizer=str(tiny_chat_model_dir))
    assert type(from_folder.model) is AutoDecoForCausalLM
    assert _pipe(from_folder, PROMPT, seed=6) == _pipe(pipe, PROMPT, seed=6)
    in_bfloat16 = transformers.pipeline(
        "text-generation", model=str(tmp_path / "heads"), tokenizer=str(tiny_chat_model_dir), dtype=torch.bfloat16
    )
    assert in_bfloat16.model.llm.dtype == torch.bfloat16


def test_no_generation_config_deprecation_warning(pipe, caplog):
    # pipeline() hands generate() a generation_config and loose settings; transformers deprecates getting both.
    from transformers.utils import logging as transformers_logging

    transformers_logging.get_logger("transformers.generation.utils").warning_once.cache_clear()
    propagate = transformers_logging.get_logger("transformers").propagate
    transformers_logging.get_logger("transformers").propagate = True  # let caplog see transformers' records
    try:
        with caplog.at_level("WARNING"):
            pipe("What is 2 + 2?", max_new_tokens=4, num_return_sequences=2, return_full_text=False)
            pipe("What is 2 + 2?", max_new_tokens=4, do_sample=False)
    finally:
        transformers_logging.get_logger("transformers").propagate = propagate
    assert not [record for record in caplog.records if "generation_config" in record.getMessage()]
