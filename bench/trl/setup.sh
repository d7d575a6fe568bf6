#!/usr/bin/env bash
# The separate venvs for the TRL side of the benchmarks. Idempotent: each is skipped when its
# stamp file exists.
#
#   bash bench/trl/setup.sh            # both
#   bash bench/trl/setup.sh ppo|grpo   # one of them
#
# bench/.venv-trl (bench/reward.py, bench/ppo.py): TRL 1.12.0, the newest release that still
# ships a PPO trainer: it has trl/experimental/ppo/ppo_trainer.py; 1.13.0 (2026-09-10) and
# later do not (removed in huggingface/trl#7020, merged 2026-09-02). The reward side uses the
# same release.
#
# bench/.venv-trl-grpo (bench/group.py): TRL 1.16.0, for GRPOTrainer and RLOOTrainer. It cannot
# share the venv above (one trl per venv). Same pins as that one: trl 1.16.0 accepts them.
#
# transformers, peft and accelerate are pinned to the project venv's versions, so the two
# sides differ in their training code, not in the libraries under it.
set -euo pipefail
cd "$(dirname "$0")/.."                  # bench/
PINS=(transformers==5.19.0 peft==0.21.2 accelerate==1.15.0 datasets==4.8.5)

# setup VENV TRL_VERSION IMPORT_CHECK
setup() {
    local venv=$1 version=$2 check=$3
    local stamp=$venv/.installed-trl-$version
    if [ -f "$stamp" ]; then
        echo "$venv: already set up ($stamp)"
        return 0
    fi
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --upgrade pip
    # torch first, from the local CPU build; anything asked for earlier would pull a CUDA build.
    "$venv/bin/pip" install torch==2.13.0
    "$venv/bin/pip" install "trl==$version" "${PINS[@]}"
    # No CPU build of these exists on the registry; the ones pip may drag in break imports.
    "$venv/bin/pip" uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
    "$venv/bin/python" -c "import torch, transformers, peft, trl; $check; print('$venv:', 'torch', \
torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__)"
    touch "$stamp"
}

which=${1:-all}
case $which in
    all|ppo|grpo) ;;
    *) echo "usage: $0 [all|ppo|grpo]" >&2; exit 2 ;;
esac
if [ "$which" != grpo ]; then
    setup .venv-trl 1.12.0 "from trl import RewardTrainer; from trl.experimental.ppo import PPOTrainer"
fi
if [ "$which" != ppo ]; then
    setup .venv-trl-grpo 1.16.0 "from trl import GRPOTrainer, GRPOConfig, RLOOTrainer, RLOOConfig"
fi
