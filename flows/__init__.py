"""The top layer: Prefect flows (one per stage, plus the parent `pipeline` that calls them as
subflows), the pipeline config, the CLI, reports and plots, deployments and schedules.

Tasks are small and typed, pass Parquet part paths (never DataFrames or models), and
publish a markdown artifact per stage.
"""

import os as _os

# The core logs its warnings (prompts cut to fit, ...) on the `rlaif` logger, without Prefect;
# Prefect forwards that logger's records to the run's log in the UI.
_os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "rlaif")
