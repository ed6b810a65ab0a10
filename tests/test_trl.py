"""TRL as a real downstream client: DPOTrainer trains 2 steps on the built `dpo` config (train split)."""
import json
import math

import pytest

pytestmark = pytest.mark.slow


def _max_length(manifest: dict, rows, tokenizer) -> int:
    """manifest.json's lengths.dpo_max_length when the build records it, else the longest prompt +
    answer of these rows in tokens (so no pair is truncated)."""
    recorded = manifest.get("lengths", {}).get("dpo_max_length")
    if recorded:
        return int(recorded)
    return max(len(tokenizer.apply_chat_template(row["prompt"] + row[side], tokenize=True, return_dict=False))
               for row in rows for side in ("chosen", "rejected"))


def test_dpo_trainer_runs_two_steps_on_the_dpo_config(tiny_build, tiny_model, tmp_path):
    import datasets
    import trl  # the dev extra
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_build[0] / "a" / "persona"
    manifest = json.loads((folder / "manifest.json").read_text())
    train = datasets.load_dataset(str(folder), "dpo", split="train", cache_dir=str(tmp_path / "hf"))
    assert len(train) == manifest["splits"]["dpo"]["train"]["rows"] >= 2

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    args = trl.DPOConfig(
        output_dir=str(tmp_path / "dpo"), max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1,
        max_length=_max_length(manifest, train, tokenizer), learning_rate=1e-4, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=True, seed=0, dataloader_num_workers=0,
    )
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)
    result = trainer.train()

    assert trainer.state.global_step == 2
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses), trainer.state.log_history
    assert math.isfinite(result.training_loss)
