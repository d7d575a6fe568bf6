"""The typed configs: shared sub-configs, partial overrides, the checks that guard the maths."""

import pytest
from pydantic import ValidationError

from evaluation.config import EvalConfig
from flows.config import PipelineConfig
from rlaif.config import GenerateConfig, Sampling, Trainable
from training.config import PPOConfig, RewardConfig, SFTConfig


def test_a_partial_sub_config_keeps_the_stages_other_defaults():
    """From YAML or a deployment parameter, {sampling: {max_new_tokens: 16}} changes that field
    only: generation keeps its own temperature and top_p, not Sampling's class defaults."""
    g = GenerateConfig.model_validate({"sampling": {"max_new_tokens": 16}})
    assert g.sampling == Sampling(max_new_tokens=16, temperature=0.8, top_p=0.95)
    p = PipelineConfig.model_validate({"ppo": {"sampling": {"max_new_tokens": 5}},
                                       "eval": {"sampling": {"temperature": 0.5}}})
    assert p.ppo.sampling == Sampling(max_new_tokens=5, temperature=0.7)
    assert p.eval.sampling == Sampling(max_new_tokens=48, temperature=0.5)
    with pytest.raises(ValidationError, match="sampling.max_new_tokens"):
        GenerateConfig.model_validate({"sampling": {"max_new_tokens": 0}})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        GenerateConfig.model_validate({"sampling": {"max_tokens": 16}})


def test_what_trains_is_one_setting_for_every_trainer():
    for cfg in (SFTConfig, RewardConfig, PPOConfig):
        assert cfg().trainable == Trainable(method="lora")
        assert cfg.model_validate({"trainable": {"method": "last_layers", "last_layers": 3}}).trainable.last_layers == 3
    with pytest.raises(ValidationError, match="trainable.method"):
        PPOConfig.model_validate({"trainable": {"method": "adapters"}})


def test_ppo_and_the_evaluation_sample_from_the_full_softmax():
    """Their logprobs and KL are those of the temperature-scaled softmax: nucleus sampling or
    greedy rollouts would make them wrong, so the config refuses them."""
    with pytest.raises(ValidationError, match="full softmax at a positive temperature"):
        PPOConfig.model_validate({"sampling": {"top_p": 0.9}})
    with pytest.raises(ValidationError, match="full softmax at a positive temperature"):
        PPOConfig.model_validate({"sampling": {"temperature": 0.0}})
    with pytest.raises(ValidationError, match="full softmax; got top_p=0.9"):
        EvalConfig.model_validate({"sampling": {"top_p": 0.9}})


def test_group_baselines_need_groups_and_grpo_puts_its_kl_in_the_loss():
    for bad in ({"algorithm": "rloo"}, {"algorithm": "grpo", "group_size": 1}, {"reward_source": "tournament"}):
        with pytest.raises(ValidationError, match="group_size must be at least 2"):
            PPOConfig.model_validate(bad)
    assert PPOConfig.model_validate({"algorithm": "grpo", "group_size": 2}).kl_in_loss
    assert not PPOConfig.model_validate({"algorithm": "rloo", "group_size": 2}).kl_in_loss and not PPOConfig().kl_in_loss
    assert PPOConfig(kl_penalty="loss").kl_in_loss
    assert not PPOConfig.model_validate({"algorithm": "grpo", "group_size": 4, "kl_penalty": "reward"}).kl_in_loss
    # from the command line, as --ppo.algorithm
    assert PipelineConfig.model_validate({"ppo": {"algorithm": "rloo", "group_size": 4}}).ppo.algorithm == "rloo"


def test_training_across_processes_refuses_what_it_cannot_honour(tmp_path):
    """Checked before any model work (prepare_run): each refusal names the setting."""
    from flows.config import RunError
    from flows.pipeline import check_launch

    two = {"train": {"num_processes": 2}}
    assert PipelineConfig.model_validate(two).train.launched and not PipelineConfig().train.launched
    check_launch(PipelineConfig.model_validate(two))  # the defaults go across processes
    with pytest.raises(RunError, match="--ppo.reward-source judge runs in one process"):
        check_launch(PipelineConfig.model_validate({**two, "ppo": {"reward_source": "judge"}}))
    with pytest.raises(RunError, match="--ppo.reward-source tournament runs in one process"):
        check_launch(PipelineConfig.model_validate({**two, "ppo": {"reward_source": "tournament", "group_size": 2}}))
    both_vllm = {"policy_engine": {"kind": "vllm"}, "judge": {"engine": {"kind": "vllm"}}}
    with pytest.raises(RunError, match="vLLM runs one engine per process: put the judge on judge.engine:transformers"):
        check_launch(PipelineConfig.model_validate({**both_vllm, "ppo": {"reward_source": "tournament", "group_size": 2}}))
    check_launch(PipelineConfig.model_validate(both_vllm))  # the demo's engines, reward model: fine
    with pytest.raises(RunError, match="not policy-engine:vllm"):
        check_launch(PipelineConfig.model_validate({**two, "policy_engine": {"kind": "vllm"}}))
    with pytest.raises(RunError, match="--train.accelerate-config 'nope.yaml': no such file"):
        check_launch(PipelineConfig.model_validate({"train": {"accelerate_config": "nope.yaml"}}))
    with pytest.raises(ValidationError, match="num_processes"):
        PipelineConfig.model_validate({"train": {"num_processes": 0}})


@pytest.mark.parametrize("run_id", ["../../etc", "a/b", ".hidden", "", "x" * 129])
def test_a_run_id_that_is_not_a_plain_folder_name_is_refused(run_id):
    """The run id names folders under the data root (checkpoints, reports), and a deployment
    run takes it from whoever reaches the Prefect API: no path may escape the root."""
    with pytest.raises(ValidationError, match="run_id"):
        PipelineConfig(run_id=run_id)
    assert PipelineConfig(run_id="20261203T071000-abc123.retry_2").run_id == "20261203T071000-abc123.retry_2"


def test_the_promotion_gate_settings_are_checked():
    with pytest.raises(ValidationError, match="min_win_rate"):
        PipelineConfig.model_validate({"promotion": {"min_win_rate": 1.5}})
    with pytest.raises(ValidationError, match="probes"):
        PipelineConfig.model_validate({"promotion": {"probes": ["length"]}})  # length has no worse side
