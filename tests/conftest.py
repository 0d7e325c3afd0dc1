"""Shared fixtures: tiny random causal LMs of several architectures, built from configs (no downloads).

``tiny_causal_lm(family, dtype)`` returns a cached, frozen, eval-mode base model; ``tiny_autodeco``
wraps it with fresh seeded heads. Each (family, dtype) base is built once per session.
Tests that change a cached base (its generation_config, say) must restore it.
"""

from __future__ import annotations

import math

import pytest
import torch

# The models here are tiny: one thread is faster than two, and much faster when pytest-xdist
# workers or other processes share the cores (thread oversubscription made steps 100x slower).
torch.set_num_threads(1)

VOCAB_SIZE = 128
HIDDEN_SIZE = 32
PAD_TOKEN_ID = 0
BOS_TOKEN_ID = 1
EOS_TOKEN_ID = 2
INITIALIZER_RANGE = 0.2
"""Larger than the usual 0.02 so that the tiny models' next-token distributions are not nearly uniform."""

_COMMON_IDS = {"pad_token_id": PAD_TOKEN_ID, "bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_ID}
_DECODER = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": HIDDEN_SIZE,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "initializer_range": INITIALIZER_RANGE,
    **_COMMON_IDS,
}


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM, LlamaConfig(**_DECODER, tie_word_embeddings=False)


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM, Qwen2Config(**_DECODER, tie_word_embeddings=False)


def _qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    return Qwen3ForCausalLM, Qwen3Config(**_DECODER, head_dim=8, tie_word_embeddings=False)


def _mistral():
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM, MistralConfig(**_DECODER, head_dim=8, sliding_window=None, tie_word_embeddings=False)


def _gpt2():
    # Different module names: transformer.h, transformer.wte, lm_head tied to wte.
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB_SIZE, n_embd=HIDDEN_SIZE, n_layer=2, n_head=4, n_positions=256,
        initializer_range=INITIALIZER_RANGE, **_COMMON_IDS,
    )
    return GPT2LMHeadModel, config


def _gemma3():
    # Tied and scaled embeddings, a sliding-window layer (window 4, shorter than the test prompts) and a global one.
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        **_DECODER, head_dim=8, sliding_window=4, layer_types=["sliding_attention", "full_attention"],
        tie_word_embeddings=True,
    )
    return Gemma3ForCausalLM, config


def _qwen2_moe():
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    config = Qwen2MoeConfig(
        **_DECODER, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=32, decoder_sparse_step=1, tie_word_embeddings=False,
    )
    return Qwen2MoeForCausalLM, config


def _mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(**_DECODER, head_dim=8, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False)
    return MixtralForCausalLM, config


BUILDERS = {
    "llama": _llama,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "mistral": _mistral,
    "gpt2": _gpt2,
    "gemma3": _gemma3,
    "qwen2_moe": _qwen2_moe,
    "mixtral": _mixtral,
}
"""family -> () -> (model class, config). Every one constructs cleanly in transformers 5.23."""
FAMILIES = tuple(BUILDERS)
DTYPES = (torch.float32, torch.bfloat16)

_CACHE: dict[tuple[str, torch.dtype], torch.nn.Module] = {}


def _seed_for(family: str) -> int:
    return sum(map(ord, family))


def build_tiny_causal_lm(family: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """A tiny random causal LM of ``family`` in ``dtype``, cached per session (do not mutate it for good).

    All dtypes of a family share the same (seeded) weights. Other dtypes are built as
    ``from_pretrained(..., dtype=dtype)`` would build them: weights in ``dtype`` but buffers such
    as the rotary ``inv_freq`` in float32 (``model.to(bfloat16)`` would round those as well, and
    then the model would not match itself after a save and reload).
    """
    key = (family, dtype)
    if key not in _CACHE:
        model_class, config = BUILDERS[family]()
        if dtype == torch.float32:
            torch.manual_seed(_seed_for(family))
            model = model_class(config)
        else:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            assert type(model) is model_class
            model.load_state_dict(build_tiny_causal_lm(family).state_dict())
        model.eval().requires_grad_(False)
        _CACHE[key] = model
    return _CACHE[key]


def build_tiny_autodeco(family: str, dtype: torch.dtype = torch.float32, **kwargs):
    """``AutoDecoForCausalLM.from_base(tiny_causal_lm(family, dtype), seed=0)``: fresh heads on the cached base."""
    from autodeco.model.modeling import AutoDecoForCausalLM

    return AutoDecoForCausalLM.from_base(build_tiny_causal_lm(family, dtype), seed=0, **kwargs)


@pytest.fixture
def tiny_causal_lm():
    """Factory fixture: ``tiny_causal_lm(family, dtype=torch.float32)``."""
    return build_tiny_causal_lm


@pytest.fixture
def tiny_autodeco():
    """Factory fixture: ``tiny_autodeco(family, dtype=torch.float32)``."""
    return build_tiny_autodeco


# Helpers shared by the test files -------------------------------------------------------------


def logit(probability: float) -> float:
    return math.log(probability / (1 - probability))


def force_heads(model, temperature: float | None = None, top_p: float | None = None) -> None:
    """Make the heads predict constant values by zeroing the final layer's weight and setting its bias."""
    with torch.no_grad():
        if temperature is not None:
            last = model.temp_head.mlp[2]
            last.weight.zero_()
            last.bias.fill_(logit(temperature / 2.0))
        if top_p is not None:
            last = model.top_p_head.mlp[2]
            last.weight.zero_()
            last.bias.fill_(logit(top_p) if top_p < 1 else 30.0)


def left_padded_batch(
    lengths=(7, 4), seed: int = 0, padding: str = "pad"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts of the given lengths, left-padded; prompt ids avoid pad/bos/eos.

    ``padding="pad"`` fills the padding with PAD_TOKEN_ID; ``padding="garbage"`` with random ids,
    so that only the attention mask tells padding apart (generate() cannot infer it from pad ids).
    """
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    if padding == "garbage":
        input_ids = torch.randint(3, VOCAB_SIZE, (len(lengths), width), generator=generator)
    else:
        input_ids = torch.full((len(lengths), width), PAD_TOKEN_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, width - length :] = torch.randint(3, VOCAB_SIZE, (length,), generator=generator)
        attention_mask[row, width - length :] = 1
    return input_ids, attention_mask


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids as ``generate()`` builds them for a left-padded batch."""
    position_ids = attention_mask.long().cumsum(-1) - 1
    return position_ids.masked_fill(attention_mask == 0, 0)


CHAT_TEMPLATE = "{% for m in messages %}<u>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
"""A minimal chat template for the character-level test tokenizer."""


def build_tiny_chat_model(folder) -> None:
    """Save a tiny random Llama with a character-level tokenizer and a chat template into ``folder``.

    Every printable ASCII character is one token, so any text (prompts, answers) can be encoded.
    """
    import string

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>", "<u>", "<a>"]
    vocab = {token: index for index, token in enumerate(specials + list(string.printable[:95]))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        additional_special_tokens=["<u>", "<a>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )
    LlamaForCausalLM(config).save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory):
    """Folder of a tiny random Llama with a character-level tokenizer and chat template (see build_tiny_chat_model)."""
    folder = tmp_path_factory.mktemp("tiny-chat-model")
    build_tiny_chat_model(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(tiny_chat_model_dir):
    """The tiny chat model's tokenizer (it has a chat template)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_chat_model_dir)
