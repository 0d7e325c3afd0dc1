"""transformers' AutoConfig / AutoModelForCausalLM load AutoDeco checkpoints once autodeco is imported (autodeco.model.auto)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

from autodeco.model import auto
from autodeco.model.config import AutoDecoConfig
from autodeco.model.modeling import AutoDecoForCausalLM

OFFICIAL = Path(__file__).resolve().parents[1] / "fixtures" / "official"
VARIANTS = ["heads-only", "heads-only-basic", "merged"]


def _official_copy(tmp_path: Path, variant: str) -> Path:
    """The official fixture, its recorded base pointed at this checkout's copy of tiny-llama."""
    folder = shutil.copytree(OFFICIAL / variant, tmp_path / variant)
    config = json.loads((folder / "config.json").read_text())
    config["base_model_name_or_path"] = str(OFFICIAL / "tiny-llama")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _same_heads(left: AutoDecoForCausalLM, right: AutoDecoForCausalLM) -> None:
    assert left.head_state_dict().keys() == right.head_state_dict().keys()
    for name, tensor in left.head_state_dict().items():
        assert torch.equal(tensor, right.head_state_dict()[name]), name


@pytest.mark.parametrize("variant", VARIANTS)
def test_official_checkpoints_load_through_the_auto_classes(tmp_path, variant):
    folder = _official_copy(tmp_path, variant)
    config = AutoConfig.from_pretrained(folder)
    assert config == AutoDecoConfig.from_json_file(folder / "config.json")
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model) is AutoDecoForCausalLM
    direct = AutoDecoForCausalLM.from_pretrained(folder)
    _same_heads(model, direct)
    input_ids = torch.tensor([[5, 17, 33, 2, 90]])
    expected, got = direct(input_ids), model(input_ids)
    assert torch.equal(got.logits, expected.logits) and torch.equal(got.temperature, expected.temperature)
    assert torch.equal(got.top_p, expected.top_p)


def test_our_heads_only_checkpoint_loads_through_the_auto_classes(tmp_path, tiny_chat_model_dir):
    saved = AutoDecoForCausalLM.from_base(str(tiny_chat_model_dir), seed=0)
    saved.save_pretrained(tmp_path / "heads")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "heads"), AutoDecoConfig)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "heads")
    assert type(model) is AutoDecoForCausalLM
    assert model.config == AutoDecoConfig.from_json_file(tmp_path / "heads" / "config.json")
    _same_heads(model, saved)


@pytest.mark.parametrize("keyword", ["dtype", "torch_dtype"])
@pytest.mark.parametrize("variant", ["heads-only", "merged"])
def test_dtype_and_device_map_reach_the_base(tmp_path, variant, keyword):
    folder = _official_copy(tmp_path, variant)
    model = AutoModelForCausalLM.from_pretrained(folder, **{keyword: torch.bfloat16}, device_map="cpu")
    assert model.llm.dtype == torch.bfloat16 and model.llm.device.type == "cpu"
    assert model.device == model.llm.lm_head.weight.device  # the heads follow the base's output layer


def test_config_keywords_override_the_file_as_for_transformers_configs(tmp_path):
    folder = _official_copy(tmp_path, "heads-only")
    assert AutoConfig.from_pretrained(folder, enable_top_p_head=False).enable_top_p_head is False
    model = AutoModelForCausalLM.from_pretrained(folder, enable_top_p_head=False)
    assert model.config.enable_top_p_head is False
    assert torch.all(model(torch.tensor([[5, 6, 7]])).top_p == 1.0)


def test_unknown_and_wrong_keywords_are_refused_by_name(tmp_path):
    folder = _official_copy(tmp_path, "heads-only")
    with pytest.raises(ValueError, match=r"takes no keyword \['color'\].*its fields are"):
        AutoConfig.from_pretrained(folder, color="blue")
    with pytest.raises(ValueError, match=r"config.json: enable_top_p_head must be true or false.*'no'.*keyword"):
        AutoConfig.from_pretrained(folder, enable_top_p_head="no")
    with pytest.raises(ValueError, match=r"does not use \['attn_implementation'\].*'eager'.*base_model="):
        AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    with pytest.raises(ValueError, match=r"dtype=torch.float32 and torch_dtype=torch.bfloat16 disagree"):
        AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, torch_dtype=torch.bfloat16)
    loaded = AutoDecoForCausalLM.from_pretrained(folder).llm
    with pytest.raises(ValueError, match=r"device_map='cpu' places a base loaded here.*base.to"):
        AutoDecoForCausalLM.from_pretrained(folder, base_model=loaded, device_map="cpu")


def test_a_heads_folder_given_as_the_base_is_refused_by_name(tmp_path):
    folder = _official_copy(tmp_path, "heads-only")
    with pytest.raises(ValueError, match=r"is an AutoDeco heads checkpoint \(model_type 'autodeco'\), not a base model"):
        AutoDecoForCausalLM.from_base(str(folder))


def test_registration_is_idempotent():
    for _ in range(2):
        auto.register()
        auto.register_when_transformers_loads()
    assert CONFIG_MAPPING["autodeco"] is AutoDecoConfig
    assert MODEL_FOR_CAUSAL_LM_MAPPING[AutoDecoConfig] is AutoDecoForCausalLM
    assert sys.meta_path.count(auto._HOOK) <= 1


def _run(code: str) -> None:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_import_autodeco_registers_when_transformers_loads_later(tmp_path):
    """``import autodeco`` loads neither torch nor the model; transformers' Auto classes know the checkpoint anyway."""
    folder = _official_copy(tmp_path, "heads-only")
    _run(
        "import sys\nimport autodeco\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "from transformers import AutoConfig, AutoModelForCausalLM\n"
        "from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING\n"
        "from autodeco.model.config import AutoDecoConfig\n"
        "assert 'autodeco.model.modeling' not in sys.modules\n"
        "assert MODEL_FOR_CAUSAL_LM_MAPPING[AutoDecoConfig].__name__ == 'DeferredAutoDecoForCausalLM'\n"
        f"assert type(AutoConfig.from_pretrained({str(folder)!r})) is AutoDecoConfig\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(folder)!r})\n"
        "from autodeco import AutoDecoForCausalLM\n"
        "assert type(model) is AutoDecoForCausalLM\n"
        "assert MODEL_FOR_CAUSAL_LM_MAPPING[AutoDecoConfig] is AutoDecoForCausalLM\n"
    )


def test_import_autodeco_after_transformers_registers_at_once(tmp_path):
    folder = _official_copy(tmp_path, "heads-only")
    _run(
        "from transformers import AutoConfig\nimport autodeco\n"
        "from autodeco.model.config import AutoDecoConfig\n"
        f"assert type(AutoConfig.from_pretrained({str(folder)!r})) is AutoDecoConfig\n"
    )
