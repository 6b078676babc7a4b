"""The scripts under accelerate: two CPU processes train as one process with the same global batch; FSDP configs.

The runs mask every non-special token with [MASK] (so the masks do not depend on how batches are split) and
turn dropout off, and the blocks carry different numbers of maskable tokens, so the match also shows that the
loss is normalised by the masked tokens of the whole global batch across processes. SGD without momentum keeps
float rounding from being amplified (Adam's first steps move weights with tiny gradients by the learning rate).
Tolerances: logged losses within 1e-5 relative, weights within 1e-5 absolute (measured: 2e-7 and 1.2e-7).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml
from accelerate import FullyShardedDataParallelPlugin
from examples_support import CPU_RUN, EXAMPLES, TINY_TEXT_SHAPE, read_json
from safetensors.torch import load_file

import run_mlm
from common import InputError, run
from lion_hf import LionConfig, LionForImageClassification, LionForMaskedLM

STEPS = 3


def mlm_flags(output_dir, text_data, tokenizer_dir, per_device_batch):
    return [
        "--model_type", "lion", "--tokenizer_name", str(tokenizer_dir), "--train_file", str(text_data["corpus"]),
        "--config_overrides", f"variant=s,{TINY_TEXT_SHAPE},hidden_dropout_prob=0,attention_probs_dropout_prob=0",
        "--max_seq_length", "32", "--max_train_samples", "16", "--mlm_probability", "1", "--mask_replace_prob", "1",
        "--random_replace_prob", "0", "--do_train", "--max_steps", str(STEPS), "--optim", "sgd", "--learning_rate", "1",
        "--logging_steps", "1", "--save_steps", str(STEPS), "--per_device_train_batch_size", str(per_device_batch),
        "--output_dir", str(output_dir), *CPU_RUN,
    ]  # fmt: skip


def losses(output_dir):
    return [entry["loss"] for entry in read_json(output_dir / "trainer_state.json")["log_history"] if "loss" in entry]


def test_two_processes_train_as_one_process_with_the_same_global_batch(tmp_path, text_data, tokenizer_dir):
    two = tmp_path / "two_processes"
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(EXAMPLES / "accelerate" / "cpu_2proc.yaml"),
        str(EXAMPLES / "run_mlm.py"), *mlm_flags(two, text_data, tokenizer_dir, per_device_batch=4),
    ]  # fmt: skip
    result = subprocess.run(
        command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    one = tmp_path / "one_process"
    run_mlm.main(mlm_flags(one, text_data, tokenizer_dir, per_device_batch=8))

    assert read_json(two / "trainer_state.json")["global_step"] == STEPS
    assert len(losses(one)) == STEPS
    torch.testing.assert_close(torch.tensor(losses(two)), torch.tensor(losses(one)), rtol=1e-5, atol=0)
    assert losses(one)[-1] < losses(one)[0]
    final_one, final_two = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert final_one.keys() == final_two.keys()
    for name in final_one:
        torch.testing.assert_close(final_two[name], final_one[name], rtol=0, atol=1e-5, msg=name)
    checkpoint = LionForMaskedLM.from_pretrained(two / f"checkpoint-{STEPS}")
    for name, value in checkpoint.state_dict().items():
        if name in final_two:
            torch.testing.assert_close(value, final_two[name], rtol=0, atol=0, msg=name)


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group, as ``Trainer`` starts one in each process under ``accelerate launch``."""
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def test_a_script_that_finished_destroys_its_process_group_before_the_interpreter_exits(process_group):
    seen = []
    run(lambda: seen.append(torch.distributed.is_initialized()))
    assert seen == [True] and not torch.distributed.is_initialized()


def test_a_script_that_failed_leaves_its_process_group_alone(process_group):
    def main():
        raise InputError("no such column")

    with pytest.raises(SystemExit, match="error: no such column"):
        run(main)
    assert torch.distributed.is_initialized()


@pytest.mark.parametrize("name, layer", [("fsdp_text.yaml", "LionTextLayer"), ("fsdp_vision.yaml", "LionVisionLayer")])
def test_fsdp_configs_auto_wrap_the_lion_layers(name, layer):
    settings = yaml.safe_load((EXAMPLES / "accelerate" / name).read_text())
    assert settings["distributed_type"] == "FSDP" and settings["mixed_precision"] == "bf16"
    fsdp = settings["fsdp_config"]
    assert fsdp["fsdp_reshard_after_forward"] is True and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    shape = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2)
    models = {
        "LionTextLayer": LionForMaskedLM(LionConfig(vocab_size=50, **shape)),
        "LionVisionLayer": LionForImageClassification(
            LionConfig(modality="vision", image_size=16, patch_size=8, **shape)
        ),
    }
    for model_layer, model in models.items():
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=fsdp["fsdp_version"],
            auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"].lower(),
            transformer_cls_names_to_wrap=fsdp["fsdp_transformer_layer_cls_to_wrap"].split(","),
            reshard_after_forward=fsdp["fsdp_reshard_after_forward"],
        )
        if model_layer != layer:  # accelerate refuses a layer class the model does not have
            with pytest.raises(ValueError, match=f"Could not find the transformer layer class {layer}"):
                plugin.set_auto_wrap_policy(model)
            continue
        plugin.set_auto_wrap_policy(model)
        assert [cls.__name__ for cls in plugin.auto_wrap_policy.keywords["transformer_layer_cls"]] == [layer]
