#!/usr/bin/env bash
# Screenshot of the Prefect UI showing a finished pipeline run and its artifacts, taken in
# headless Chromium (Debian's `chromium`: apt-get install chromium).
#
#   bash docs/screenshot.sh [out.png]      # default docs/prefect-ui-run.png
#
# Starts a Prefect server on loopback in a throwaway PREFECT_HOME, runs the pipeline once on a
# small random-weight model (seconds, not minutes), then opens the run's page and its
# Artifacts tab. Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/prefect-ui-run.png}
PORT=${PORT:-4242}
WORK=$(mktemp -d)
export PREFECT_HOME=$WORK/prefect PREFECT_API_URL=http://127.0.0.1:$PORT/api PREFECT_UI_ENABLED=true
export PREFECT_SERVER_ANALYTICS_ENABLED=false
.venv/bin/prefect server start --host 127.0.0.1 --port "$PORT" > "$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 120); do curl -sf "$PREFECT_API_URL/health" > /dev/null && break; sleep 1; done

RUN_ID=$(.venv/bin/python - "$WORK" <<'EOF'
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from flows.pipeline import pipeline
from flows.config import PipelineConfig
from rlaif.models import EMBEDDED_MODEL, load_tokenizer

work = Path(sys.argv[1])
tok = load_tokenizer(EMBEDDED_MODEL)
torch.manual_seed(0)
LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).save_pretrained(work / "tiny")
tok.save_pretrained(work / "tiny")
tiny = str(work / "tiny")
cfg = PipelineConfig.model_validate({
    "data": str(work / "data"), "policy_model": tiny, "judge": {"model": tiny}, "run_id": "ui-screenshot",
    "generate": {"n_prompts": 6, "max_new_tokens": 8}, "feedback": {"max_new_tokens": 6},
    "reward": {"epochs": 1, "batch_size": 2}, "ppo": {"steps": 3, "batch_size": 4, "mini_batch_size": 2},
    "eval": {"n_prompts": 4, "max_new_tokens": 8}})

state = pipeline(cfg, return_state=True)
print(state.state_details.flow_run_id)
EOF
)
RUN_ID=$(echo "$RUN_ID" | tail -1)
mkdir -p "$(dirname "$OUT")"
shot() {  # shot URL FILE
    chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
        --disable-component-update --disable-sync --user-data-dir="$WORK/chrome" --hide-scrollbars \
        --window-size=1500,1100 --virtual-time-budget=15000 --screenshot="$2" "$1" 2>> "$WORK/chrome.log"
}
shot "http://127.0.0.1:$PORT/runs/flow-run/$RUN_ID" "$OUT"                        # the run and its subflows
ARTIFACT=$(curl -sf -X POST "$PREFECT_API_URL/artifacts/filter" -H 'content-type: application/json' \
    -d '{"artifacts": {"key": {"any_": ["pipeline-report"]}}}' | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
shot "http://127.0.0.1:$PORT/artifacts/artifact/$ARTIFACT" "${OUT%.png}-report.png"  # its report artifact
echo "flow run $RUN_ID -> $OUT, ${OUT%.png}-report.png"
