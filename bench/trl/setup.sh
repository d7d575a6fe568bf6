#!/usr/bin/env bash
# The separate venv for the TRL side of the benchmarks (bench/reward.py, bench/ppo.py):
# bench/.venv-trl. Idempotent: skipped when the stamp file exists.
#
#   bash bench/trl/setup.sh
#
# TRL 1.12.0 is the newest release that still ships a PPO trainer: it has
# trl/experimental/ppo/ppo_trainer.py; 1.13.0 (2026-09-10) and later do not (removed in
# huggingface/trl#7020, merged 2026-09-02). The reward side uses the same release.
# transformers, peft and accelerate are pinned to the project venv's versions, so the two
# sides differ in their training code, not in the libraries under it.
set -euo pipefail
cd "$(dirname "$0")/.."                  # bench/
VENV=.venv-trl
STAMP=$VENV/.installed-trl-1.12.0

if [ -f "$STAMP" ]; then
    echo "$VENV: already set up ($STAMP)"
    exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --upgrade pip
# torch first, from the local CPU build; anything asked for earlier would pull a CUDA build.
"$VENV/bin/pip" install torch==2.13.0
"$VENV/bin/pip" install trl==1.12.0 transformers==5.19.0 peft==0.21.2 accelerate==1.15.0 datasets==4.8.5
# No CPU build of these exists on the registry; the ones pip may drag in break imports.
"$VENV/bin/pip" uninstall -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import torch, transformers, peft, trl; from trl import RewardTrainer; \
from trl.experimental.ppo import PPOTrainer; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__)"
touch "$STAMP"
