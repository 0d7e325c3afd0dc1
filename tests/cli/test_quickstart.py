"""``autodeco quickstart`` end to end on a tiny random model with a tiny budget; a second run reuses every stage."""

import json

from autodeco import quickstart
from autodeco.quickstart import Budget, run_quickstart


def test_quickstart_runs_every_stage_then_reuses_them(tiny_chat_model_dir, tmp_path, monkeypatch):
    tiny = Budget(train_problems=24, samples_per_prompt=8, train_steps=3, test_problems=3, seeds=2,
                  samples_per_seed=2, oracle_step=0.5, max_new_tokens=6)
    monkeypatch.setitem(quickstart.BUDGETS, "tiny", tiny)
    first = run_quickstart(tmp_path, "tiny", base=str(tiny_chat_model_dir), progress=False)
    for path in ("sample/trajectories.jsonl", "train/heads/config.json", "train/training_curve.png",
                 "eval/report.md", "eval/summary.json", "quickstart.json"):
        assert (tmp_path / path).exists(), path
    methods = {method["name"] for method in first["summary"]["methods"]}
    assert methods >= {"greedy", "default", "autodeco", "oracle"}
    assert first["eval"].samples_generated > 0
    samples_before = (tmp_path / "eval" / "samples.jsonl").read_text()
    heads_before = (tmp_path / "train" / "heads" / "model.safetensors").read_bytes()

    second = run_quickstart(tmp_path, "tiny", base=str(tiny_chat_model_dir), progress=False)
    assert second["eval"].samples_generated == 0
    assert (tmp_path / "eval" / "samples.jsonl").read_text() == samples_before
    assert (tmp_path / "train" / "heads" / "model.safetensors").read_bytes() == heads_before
    assert json.loads((tmp_path / "quickstart.json").read_text())["budget"] == "tiny"
