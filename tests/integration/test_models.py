import pytest

from judges.config import JudgeConfig
from rlaif.models import EMBEDDED, EMBEDDED_JUDGE, ModelError, load_tokenizer, resolve_model


def test_bad_model_names_are_named_in_the_error(tmp_path):
    with pytest.raises(ModelError, match=r"model 'no-such-model': not an embedded model \(smollm2-135m-instruct, gemma3-270m\)"):
        resolve_model("no-such-model")
    with pytest.raises(ModelError, match="expected config.json or adapter_config.json"):
        resolve_model(tmp_path)  # an existing folder that is not a model


@pytest.mark.parametrize("name", list(EMBEDDED))
def test_embedded_models_resolve_offline_to_plain_hf_folders(name):
    path = resolve_model(name)
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()
    assert "quantization_config" not in (path / "config.json").read_text()
    assert "local_files_only" not in (path / "tokenizer_config.json").read_text()
    tok = load_tokenizer(name)
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert tok.chat_template  # critiques and chat-format judge questions need one


def test_default_judge_is_gemma_with_its_licence_bos_and_chat_template():
    assert JudgeConfig().model == EMBEDDED_JUDGE
    path = resolve_model(EMBEDDED_JUDGE)
    assert (path / "GEMMA_TERMS.html").exists()  # the terms travel with the weights
    tok = load_tokenizer(EMBEDDED_JUDGE)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    assert tok("hi").input_ids[0] == tok.bos_token_id


def test_local_folder_is_accepted(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir


def test_merged_state_dict_folds_lora_in_and_leaves_the_model_as_it_was(tiny_model_dir):
    """What a vllm engine is handed for a LoRA policy on a CPU: the merged weights under the
    plain names, equal to peft's own merge, with the training model untouched."""
    import copy

    import torch

    from rlaif.config import Trainable
    from rlaif.models import load_causal_lm, merged_state_dict
    from training.common import make_trainable

    torch.manual_seed(0)
    policy = make_trainable(load_causal_lm(tiny_model_dir), Trainable(), "CAUSAL_LM")
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)  # a trained adapter: B is no longer zero
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    merged = merged_state_dict(policy)
    want = copy.deepcopy(policy).merge_and_unload().state_dict()
    assert set(merged) == set(want)
    assert all(torch.allclose(merged[k], want[k], atol=1e-6) for k in want)
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"])
    assert all(torch.equal(v, policy.state_dict()[k]) for k, v in before.items())
