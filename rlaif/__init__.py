"""rlaif: Constitutional-AI-style RLAIF as a scheduled Prefect service.

Core package: the Parquet store, model loading, prompts, generation, evaluation and the CLI.
The stages live in the sibling packages `constitution`, `judges`, `training` and `flows`.
"""

__version__ = "0.1.0"

import os as _os

# The machine has no route to Prefect's telemetry endpoint; do not try.
_os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
