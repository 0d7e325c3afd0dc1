"""The plugin on every architecture it registers besides Llama (tests/engines/test_vllm.py): a tiny random model of each
decodes greedily like the HF model and records the T and P of the HF model's teacher-forced pass.

Each architecture runs in a process of its own (vLLM starts one engine per process), about 30 s each.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
pytest.importorskip("vllm", reason="vLLM is not installed: ./bin/test-vllm builds .venv-vllm and runs these tests")

FAMILIES = ("qwen2", "qwen3", "mistral", "mixtral", "qwen2_moe", "qwen3_moe")


@pytest.mark.parametrize("family", FAMILIES)
def test_architecture_decodes_like_hf(family, tmp_path):
    script = tmp_path / "check.py"
    script.write_text(CHECK)
    completed = subprocess.run([sys.executable, str(script), family, str(tmp_path)], capture_output=True, text=True,
                               timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["greedy_equal"]
    assert result["max_value_error"] < 1e-4


CHECK = """import json, string, sys
import torch


def build(family, folder):
    import transformers as T
    from tokenizers import Tokenizer, models, pre_tokenizers
    specials = ["<pad>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + list(string.printable[:95]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>")); tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(folder)
    common = dict(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.2, tie_word_embeddings=False,
                  pad_token_id=0, bos_token_id=1, eos_token_id=1)
    configs = {
        "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, {}),
        "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM, {"head_dim": 32}),
        "mistral": (T.MistralConfig, T.MistralForCausalLM, {"head_dim": 32, "sliding_window": None}),
        "mixtral": (T.MixtralConfig, T.MixtralForCausalLM, {"head_dim": 32, "num_local_experts": 4, "num_experts_per_tok": 2}),
        "qwen2_moe": (T.Qwen2MoeConfig, T.Qwen2MoeForCausalLM, {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64, "shared_expert_intermediate_size": 64, "decoder_sparse_step": 1}),
        "qwen3_moe": (T.Qwen3MoeConfig, T.Qwen3MoeForCausalLM, {"head_dim": 32, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 64, "decoder_sparse_step": 1}),
    }
    config_class, model_class, extra = configs[family]
    torch.manual_seed(0)
    model_class(config_class(**common, **extra)).save_pretrained(folder)

if __name__ == "__main__":
    family, folder = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    from autodeco.core.decoding import combine_with_user_values
    from autodeco.core.multipliers import Multipliers
    from autodeco.engines.vllm import BaseSampling, RowRequest, VllmEngine
    from autodeco.engines.vllm_export import export_for_vllm
    from autodeco.model.generation import generate_with_base
    from autodeco.model.modeling import AutoDecoForCausalLM
    build(family, folder + "/base")
    model = AutoDecoForCausalLM.from_base(folder + "/base", seed=0)
    heads = model.save_pretrained(folder + "/heads")
    engine = VllmEngine(export_for_vllm(heads, folder + "/vllm"), dtype="float32", max_model_len=256)
    prompt = engine.tokenizer.encode("hello world", add_special_tokens=False)
    greedy, sampled = engine.generate([RowRequest(prompt, 16, BaseSampling(0.0, 1.0)), RowRequest(prompt, 16, Multipliers(0.7, 1.3), 3)])
    expected = generate_with_base(model.llm, torch.tensor([prompt]), sample=False, max_new_tokens=16, pad_token_id=0)[0, len(prompt):].tolist()
    ok_greedy = greedy.token_ids == expected[: len(greedy.token_ids)]
    with torch.no_grad():
        out = model(torch.tensor([prompt + sampled.token_ids]))
    pos = slice(len(prompt) - 1, len(prompt) - 1 + len(sampled.token_ids))
    t, p = combine_with_user_values(out.temperature[0, pos], out.top_p[0, pos], 0.7, 1.3)
    err = max((torch.tensor(sampled.temperatures) - t).abs().max().item(), (torch.tensor(sampled.top_ps) - p).abs().max().item())
    print("RESULT", json.dumps({"greedy_equal": ok_greedy, "max_value_error": err}))
    engine.close()
"""
