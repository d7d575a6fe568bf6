"""The `rlaif` command line. Flags are generated from the typed stage configs, so every
option's help text is the docstring next to its field. Building it imports the configs only
(pydantic and tyro): torch, transformers and Prefect load when a command runs."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Literal

import tyro

from flows.config import CompareConfig, PipelineConfig
from judges.config import JudgeConfig


def _elapsed(t0: float) -> str:
    minutes, seconds = divmod(int(time.monotonic() - t0), 60)
    return f"{minutes}m{seconds:02d}s"


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that name bad input (a constitution, prompts, a model, a data root, a run that is
    not there) or a run that cannot go on: the CLI prints their message as one line. Anything
    else is a bug and keeps its traceback."""
    from constitution import ConstitutionError
    from evaluation.probes import ProbeError
    from flows.config import RunError
    from flows.deployments import SchedulesError
    from judges.judge import JudgeError
    from rlaif.engines import EngineError
    from rlaif.runtime import DeviceError
    from judges.human_eval import PairsFileError
    from rlaif.models import ModelError
    from rlaif.prompts import PromptError
    from rlaif.registry import RegistryError
    from rlaif.store import StoreError
    from training import TrainingError

    return (ConstitutionError, RunError, SchedulesError, JudgeError, PairsFileError, ModelError, PromptError,
            StoreError, TrainingError, EngineError, DeviceError, ProbeError, RegistryError)


def _or_exit(command: str, fn):
    """Run a command; a user error ends it with `rlaif <command>: message` and exit 1 (Prefect
    has logged the failed flow run)."""
    try:
        return fn()
    except Exception as e:
        if isinstance(e, user_errors()):
            print(f"rlaif {command}: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        raise


def run(config: Annotated[PipelineConfig, tyro.conf.arg(name="")],
        flow: Literal["pipeline", "feedback", "training"] = "pipeline"):
    """Run the whole pipeline once (generate, feedback, reward model, PPO, evaluate), or one of the
    service's flows as its schedule would.

    Args:
        config: The pipeline's settings.
        flow: pipeline: every stage, from --policy-model. feedback: the nightly collection
            (generate and label, sampling the constitution's champion). training: the weekly
            retraining from the champion on the preferences collected on its samples, evaluated
            against it; the promotion gate decides whether the new policy becomes champion.
    """
    from flows.pipeline import feedback_pipeline, pipeline, training_pipeline

    entry = {"pipeline": pipeline, "feedback": feedback_pipeline, "training": training_pipeline}[flow]
    t0 = time.monotonic()
    result = _or_exit("run", lambda: entry(config))
    print(f"\nRLAIF run {result.run_id} ({flow}) finished in {_elapsed(t0)}")
    print_result(result)
    return result


def evaluate(config: Annotated[PipelineConfig, tyro.conf.arg(name="")], policy: str | None = None,
             reward_model: str | None = None):
    """Evaluate a finished run again on held-out prompts (behaviour probes, win rate, adherence, KL, the
    reward-KL curve over PPO's snapshots), e.g. with other --eval.* settings or another judge.

    Args:
        config: `--run-id` (and `--constitution`, `--data`) locate the run's checkpoints.
        policy: A policy folder to evaluate instead of the run's.
        reward_model: A reward-model folder to score with instead of the run's.
    """
    from flows.pipeline import evaluation_pipeline

    t0 = time.monotonic()
    result = _or_exit("evaluate", lambda: evaluation_pipeline(config, policy, reward_model))
    print(f"\nevaluation of run {result.run_id} finished in {_elapsed(t0)}")
    print_result(result)
    return result


def compare(config: Annotated[CompareConfig, tyro.conf.arg(name="")]):
    """Constitution A/B: run (or reuse) the pipeline under each constitution, then judge each
    trained policy under each constitution; writes compare.md with the table and samples."""
    from flows.compare import compare_pipeline
    from flows.reports import fmt

    t0 = time.monotonic()
    result = _or_exit("compare", lambda: compare_pipeline(config))
    print(f"\nconstitution A/B {result.compare_id} finished in {_elapsed(t0)}")
    print(f"  report  {result.report}")
    print(f"  {'trained under':<16}{'judged under':<16}{'win rate':<10}{'95% CI':<18}{'adherence':<10}")
    for r in result.table:
        ci = f"{fmt(r['win_rate_ci_low'])} to {fmt(r['win_rate_ci_high'])}"
        print(f"  {r['trained_under']:<16}{r['judged_under']:<16}{fmt(r['win_rate']):<10}{ci:<18}"
              f"{fmt(r['policy_adherence_rate']):<10}")
    print(f"  {'trained under':<16}{'probe':<44}{'policy - reference (95% CI)'}")
    for r in result.probes:
        print(f"  {r['trained_under']:<16}{r['label']:<44}{fmt(r['diff'])} ({fmt(r['diff_ci_low'])} to "
              f"{fmt(r['diff_ci_high'])}, n={r['n']})")
    for r in result.policy_diffs:
        pair = f"{r['a']} - {r['b']}"
        print(f"  {pair:<16}{r['label']:<44}{fmt(r['diff'])} ({fmt(r['diff_ci_low'])} to "
              f"{fmt(r['diff_ci_high'])}, n={r['n']})")
    return result


def print_result(result) -> None:
    """A finished run's paths and headline, for the terminal."""
    from flows.reports import aligned

    print(*aligned({"constitution_sha": result.constitution_sha,
                    "Parquet data": f"{result.data}  (pandas.read_parquet('<data>/preferences'))",
                    "checkpoints": result.checkpoints, "report": result.report}), sep="\n")
    if result.stages.promotion is not None:
        from flows.reports import gate_line

        print("Promotion gate:", gate_line(result.stages.promotion).replace("`", ""))
    print("Headline numbers (95% intervals; the verdict opens the report)")
    print(*aligned({k: v.text() for k, v in result.headline.items()}), sep="\n")
    print("Prefect UI: the runs and their artifacts are recorded in Prefect's database. To see them:\n"
          "  .venv/bin/prefect server start    # then open http://127.0.0.1:4200 -> Runs")


def setup() -> None:
    """Convert the embedded models (policy and judge) into RLAIF_HOME once (skipped when done)."""
    from rlaif.models import EMBEDDED, convert_embedded_model

    for name in EMBEDDED:
        print(f"embedded model {name} ready: {convert_embedded_model(name)}")


def validate(paths: tyro.conf.Positional[tuple[str, ...]]) -> None:
    """Validate constitution files (names of shipped ones, or paths); report every error.

    Args:
        paths: Constitution files, or names of shipped ones.
    """
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


def serve(schedules: str | None = None, check: bool = False) -> None:
    """Serve the scheduled deployments (needs a running Prefect server: `prefect server start`).

    Args:
        schedules: Schedules file (YAML); None: the shipped flows/schedules.yaml.
        check: Validate the file and print the deployments, then exit without serving.
    """
    from flows.deployments import SHIPPED_SCHEDULES, SchedulesError, load_schedules
    from flows.deployments import serve as serve_deployments

    path = schedules or SHIPPED_SCHEDULES
    try:
        spec = load_schedules(path)
    except SchedulesError as e:
        print(e, file=sys.stderr)
        raise SystemExit(1) from None
    for d in spec.deployments:
        when = f"cron '{d.cron}' ({d.timezone})" if d.cron else f"every {d.interval_seconds:g} s"
        print(f"{d.name}: flow {d.flow}, {when}, constitution {d.parameters.constitution}"
              + (" (paused)" if d.paused else ""))
    if check:
        return
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # else prefect would serve against a throwaway in-process server
        print("rlaif serve needs a Prefect server: run `prefect server start`, then\n"
              "  export PREFECT_API_URL=http://127.0.0.1:4200/api", file=sys.stderr)
        raise SystemExit(1)
    serve_deployments(path)


def judge_eval(pairs: str, judge: Annotated[JudgeConfig, tyro.conf.arg(name="")] = JudgeConfig(),
               out: str = "judge_eval.json", constitution: str = "harmless",
               limit: int | None = 200, principles_per_pair: int = 1,
               scoring: Literal["labels", "contrastive"] = "labels",
               chain_of_thought: bool = False,
               direct_scores: bool = False, seed: int = 0, device: str = "auto",
               injection_defence: bool = True,
               on_injection: Literal["against", "invalid", "ignore"] = "against",
               inject: str | None = None) -> dict:
    """Measure how often the judge agrees with human preferences (hh-rlhf-style JSONL[.gz]).

    Args:
        pairs: File of {"chosen", "rejected"} transcripts.
        judge: The judge model and engine.
        out: Where to write the JSON result.
        constitution: Constitution whose preference questions the judge answers.
        limit: Pairs to read from the start of the file (None: all).
        principles_per_pair: Principles sampled per pair, averaged.
        scoring: labels (P(A) vs P(B), both orders) or contrastive likelihood.
        chain_of_thought: Write a rationale before reading the labels.
        direct_scores: Also rate each response 1-10 (d-RLAIF) and report its agreement.
        seed: Seed for the A/B assignment and principle sampling.
        device: Where the judge runs: auto, cpu, cuda or cuda:N.
        injection_defence: Quote responses between nonce delimiters, neutralised (the agreement run).
        on_injection: What a pair whose response matches an injection pattern becomes (the agreement run).
        inject: File of injection strings, one per line (# comments; \\n is a newline): each is
            appended to every human-rejected response, and how far it moves the judge is
            reported with the defence on and off, detection off; plus the detector's catch rate.
    """
    from constitution import load_constitution
    from judges.judge import make_judge
    from rlaif.runtime import resolve
    from judges.config import FeedbackConfig
    from judges.human_eval import (agreement_table, injection_eval, injection_table, judge_agreement,
                                   read_hh_pairs, read_injections)
    from rlaif.io import write_json_atomic

    c = load_constitution(constitution)
    df = read_hh_pairs(pairs, limit)
    injections = read_injections(inject) if inject else None  # a bad file fails before the model loads
    cfg = FeedbackConfig(principles_per_pair=principles_per_pair, scoring=scoring,
                         chain_of_thought=chain_of_thought, direct_scores=direct_scores, seed=seed,
                         injection_defence=injection_defence, on_injection=on_injection)
    with make_judge(judge, resolve(device)) as j:
        result = {"pairs_file": str(pairs), **judge_agreement(j, df, c, cfg)}
        if injections:
            result = {**result, "injections_file": str(inject), **injection_eval(j, df, c, cfg, injections)}
    write_json_atomic(out, result)
    print(agreement_table(result))
    if injections:
        print("\n" + injection_table(result))
    print(f"written to {out}")
    return result


def _data(data: str | None) -> str:
    from rlaif.paths import default_data_root

    return str(data or default_data_root())


def policies(constitution: str | None = None, data: str | None = None) -> None:
    """List the registered policies (the service's lineage): each with its parent, status,
    win rate against its parent and KL, and the time and reason of its last change.

    Args:
        constitution: Only this constitution's (a shipped name or a YAML path); None: all.
        data: Data root (env RLAIF_DATA, default ./data).
    """
    def show():
        from constitution import load_constitution
        from flows.policies import policies_table
        from rlaif.registry import Registry

        sha = load_constitution(constitution).sha if constitution else None
        found = Registry(_data(data)).policies(sha)
        if not found:
            print(f"no policies registered under {_data(data)}" + (f" for {constitution}" if constitution else "")
                  + "; every flow samples the base model (`rlaif run --flow training` registers one)")
        for line in policies_table(found):
            print(line)

    _or_exit("policies", show)


def promote(policy_id: tyro.conf.Positional[str], reason: str, data: str | None = None) -> None:
    """Make a registered policy the champion of its constitution by hand (recorded with the
    reason, like the gate's decisions); the champion it replaces is retired.

    Args:
        policy_id: The policy (its training run's id; `rlaif policies` lists them).
        reason: Why: kept in the registry with the change.
        data: Data root (env RLAIF_DATA, default ./data).
    """
    def change():
        from flows.policies import cli_lineage
        from rlaif.registry import Registry

        p = Registry(_data(data)).promote(policy_id, reason, cli_lineage)
        print(f"{p.policy_id} is the champion (replaced {p.replaced}); the next feedback run samples it")

    _or_exit("promote", change)


def rollback(reason: str, constitution: str = "harmless", policy_model: str | None = None,
             data: str | None = None) -> None:
    """Reject the constitution's champion and restore the one it replaced (or the base model):
    the next feedback run samples that one.

    Args:
        reason: Why: kept in the registry with the change.
        constitution: The constitution (a shipped name or a YAML path).
        policy_model: The base model of the chain (default: the embedded policy model).
        data: Data root (env RLAIF_DATA, default ./data).
    """
    def change():
        from constitution import load_constitution
        from flows.policies import base_key, cli_lineage
        from rlaif.config import EMBEDDED_MODEL
        from rlaif.registry import Registry

        sha = load_constitution(constitution).sha
        restored = Registry(_data(data)).rollback(sha, base_key(policy_model or EMBEDDED_MODEL), reason,
                                                  cli_lineage(sha))
        print(f"rolled back; the champion is now {restored.policy_id if restored else 'the base model'}")

    _or_exit("rollback", change)


def export(policy_id: tyro.conf.Positional[str], out: str, data: str | None = None) -> None:
    """Write a registered policy as a servable Hugging Face folder: safetensors weights, tokenizer,
    a plain generation config, the base and judge models' licence files and a model card
    (constitution, lineage, evaluation with intervals, licences). Load it with transformers or
    serve it with `vllm serve OUT`.

    Args:
        policy_id: The policy (`rlaif policies` lists them).
        out: The folder to write (an earlier export there is replaced whole; any other
            non-empty folder is refused).
        data: Data root (env RLAIF_DATA, default ./data).
    """
    def write():
        from flows.policies import export_policy

        print(f"exported {policy_id} to {export_policy(_data(data), policy_id, out)}")

    _or_exit("export", write)


def _exit_on_sigterm() -> None:
    """SIGTERM (`kill`, a service manager, `docker stop`) ends a command as `exit 143`, not by
    the signal's default action, so cleanup runs: while a flow runs, Prefect's own handler takes
    the signal first (the runs become Crashed) and then hands it here; the exit then runs the
    atexit hooks, which stop the temporary Prefect server `rlaif run` started (it would
    otherwise be left running). Training ranks stop with the flow (training.distributed)."""
    import signal

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    _exit_on_sigterm()
    tyro.extras.subcommand_cli_from_dict(
        {"run": run, "evaluate": evaluate, "compare": compare, "serve": serve, "setup": setup,
         "validate": validate, "judge-eval": judge_eval, "policies": policies, "promote": promote,
         "rollback": rollback, "export": export},
        description="rlaif: Constitutional-AI-style RLAIF pipeline (Prefect flows).",
    )


if __name__ == "__main__":
    main()
