import pytest

from rlaif.models import EMBEDDED_MODEL, ModelError, load_tokenizer, resolve_model


def test_bad_model_names_are_named_in_the_error(tmp_path):
    with pytest.raises(ModelError, match="model 'no-such-model': not the embedded model"):
        resolve_model("no-such-model")
    with pytest.raises(ModelError, match="expected config.json or adapter_config.json"):
        resolve_model(tmp_path)  # an existing folder that is not a model


def test_embedded_model_resolves_offline_to_a_plain_hf_folder():
    path = resolve_model(EMBEDDED_MODEL)
    assert (path / "config.json").exists() and (path / "model.safetensors").exists()
    assert "quantization_config" not in (path / "config.json").read_text()
    tok = load_tokenizer(EMBEDDED_MODEL)
    assert tok.padding_side == "left" and tok.pad_token_id is not None


def test_local_folder_is_accepted(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir
