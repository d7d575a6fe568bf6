"""rlaif: Constitutional-AI-style RLAIF as a scheduled Prefect service.

The core package: engines (everything that runs a model for text or log-probs), the runtime
(device, dtype, RNG), paths (RunLayout), the Parquet store, atomic io, model loading, prompts,
shared statistics and config pieces. It imports no stage and not Prefect; the
stages (`constitution`, `judges`, `training`, `evaluation`) and the orchestration (`flows`)
sit above it, and `lint-imports` checks that layering.
"""

__version__ = "0.1.0"

import os as _os

# The machine has no route to Prefect's telemetry endpoint; do not try.
_os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
