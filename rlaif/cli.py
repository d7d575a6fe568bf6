"""The `rlaif` command line. Flags are generated from the typed stage configs, so every
option's help text is the docstring next to its field."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import tyro

from rlaif.config import PipelineConfig


def run(config: Annotated[PipelineConfig, tyro.conf.arg(name="")]) -> dict:
    """Run the whole pipeline once: generate, feedback, reward model, PPO, evaluate."""
    from flows.common import fmt
    from flows.pipeline import pipeline

    t0 = time.monotonic()
    result = pipeline(config)
    minutes, seconds = divmod(int(time.monotonic() - t0), 60)
    print(f"\nRLAIF run {result['run_id']} finished in {minutes}m{seconds:02d}s")
    print(f"  constitution_sha  {result['constitution_sha']}")
    print(f"  Parquet data      {result['data']}  (pandas.read_parquet('<data>/preferences'))")
    print(f"  checkpoints       {result['checkpoints']}")
    print(f"  report            {result['report']}")
    print("Headline numbers")
    for k, v in result["headline"].items():
        print(f"  {k:<32}{fmt(v)}")
    print("Prefect UI: the runs and their artifacts are recorded in Prefect's database. To see them:\n"
          "  .venv/bin/prefect server start    # then open http://127.0.0.1:4200 -> Runs")
    return result


def setup() -> None:
    """Convert the embedded model into RLAIF_HOME once (skipped when already done)."""
    from rlaif.models import convert_embedded_model

    print(f"embedded model ready: {convert_embedded_model()}")


def validate(paths: tuple[str, ...]) -> None:
    """Validate constitution files (names of shipped ones, or paths); report every error."""
    from constitution import ConstitutionError, load_constitution

    failed = False
    for p in paths:
        try:
            c = load_constitution(p)
            print(f"{p}: ok ({c.name} v{c.version}, {len(c.principles)} principles, sha {c.sha[:12]})")
        except ConstitutionError as e:
            failed = True
            print(e, file=sys.stderr)
    if failed:
        raise SystemExit(1)


def main() -> None:
    tyro.extras.subcommand_cli_from_dict(
        {"run": run, "setup": setup, "validate": validate},
        description="rlaif: Constitutional-AI-style RLAIF pipeline (Prefect flows).",
    )


if __name__ == "__main__":
    main()
