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
