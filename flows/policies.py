"""The service loop's tasks: sample the champion, gate the candidate, export a policy.

    nightly feedback flow:  sample_champion -> generate -> label           (rows: policy_model = the champion)
    weekly training flow:   sample_champion -> preferences on its samples -> [SFT] -> RM -> PPO
                            -> evaluate against the champion -> promotion_gate -> registry

The registry (rlaif.registry) holds the policies and their status; evaluation.gate decides.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.parquet as pq
from prefect import task
from prefect.artifacts import create_markdown_artifact

from constitution import load_constitution
from evaluation.config import PromotionConfig
from evaluation.gate import gate
from flows.config import RunContext, RunError
from flows.reports import fmt, gate_line, gate_markdown
from flows.results import PromotionResult, Stages
from rlaif.io import write_dir_atomic
from rlaif.models import EMBEDDED, LICENCES, resolve_model
from rlaif.registry import BASE, Policy, Registry
from rlaif.store import Lineage, Store

# A policy folder's files a server needs; the rest (rlaif_config.json, lineage.json, PPO's state)
# is the pipeline's own record, summarised in the model card instead.
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
               "tokenizer.model", "vocab.json", "merges.txt")


def base_key(policy_model: str) -> str:
    """A chain's base model as the registry records it: an embedded model's name, or a folder's
    absolute path (so two spellings of one folder are one chain)."""
    return policy_model if policy_model in EMBEDDED else str(Path(policy_model).expanduser().resolve())


@task
def sample_champion(ctx: RunContext) -> RunContext:
    """The run's policy: the constitution's champion trained from `ctx.policy_model` (the base
    model until one is promoted). A rerun of a training run that already registered its
    candidate starts from that candidate's parent again, not from itself."""
    registry, base = Registry(ctx.data), base_key(ctx.policy_model)
    mine = [p for p in registry.policies(ctx.constitution_sha) if p.policy_id == ctx.run_id]
    start = (registry.get(mine[0].parent_id, ctx.constitution_sha) if mine and mine[0].parent_id != BASE else
             None if mine else registry.champion(ctx.constitution_sha, base))
    if start is None:
        print(f"policy: the base model {ctx.policy_model} (no champion promoted for this constitution yet)")
        return ctx.model_copy(update={"policy_id": BASE, "base_model": base})
    if not Path(start.checkpoint, "config.json").exists():
        raise RunError(f"the champion {start.policy_id} has no model at {start.checkpoint}; restore the folder, or "
                       f"`rlaif rollback --constitution {Path(ctx.constitution_path).stem}` to its predecessor")
    print(f"policy: champion {start.policy_id} ({start.checkpoint})")
    return ctx.model_copy(update={"policy_model": start.checkpoint, "policy_id": start.policy_id, "base_model": base})


def sampled_by(path: str | Path, policy_model: str) -> bool:
    """Whether a part's rows were written by runs of `policy_model` (its lineage column)."""
    col = pq.read_table(path, columns=["policy_model"]).column("policy_model")
    return len(col) > 0 and set(col.to_pylist()) == {policy_model}


@task
def collected_parts(ctx: RunContext, train_on: str = "all") -> dict[str, list[str]]:
    """The parts the weekly retraining reads: every run's for this constitution, or (train_on
    since_champion) those of runs that sampled the current champion."""
    store = Store(ctx.data)
    parts = {t: [str(p) for p in store.parts(t, ctx.constitution_sha)] for t in ("preferences", "responses", "critiques")}
    if train_on == "since_champion":
        parts = {t: [p for p in ps if sampled_by(p, ctx.policy_model)] for t, ps in parts.items()}
    if not parts["preferences"]:
        since = f" on samples of {ctx.policy_id} ({ctx.policy_model})" if train_on == "since_champion" else ""
        raise RunError(f"no preferences collected yet{since} for constitution {ctx.constitution_path} "
                       f"(sha {ctx.constitution_sha[:12]}) under {ctx.data}; run the feedback flow first")
    return parts


@task
def promotion_gate(ctx: RunContext, stages: Stages, cfg: PromotionConfig) -> PromotionResult:
    """Register the run's policy as a candidate, gate it against the champion it was evaluated
    against, and record the verdict. Idempotent: a rerun finds its decision recorded."""
    verdict = gate(stages.evaluate.metrics, cfg)
    registry, lineage = Registry(ctx.data), ctx.lineage()
    keep = ("eval/prompts", "eval/compared", "eval/win_rate", "eval/kl", "eval/position_consistency", "probe/")
    metrics = {k: v for k, v in stages.evaluate.metrics.items() if k.startswith(keep)}
    registry.register(ctx.run_id, ctx.policy_id, ctx.base_model, str(Path(stages.ppo.policy).resolve()),
                      {**metrics, "eval_part": stages.evaluate.eval}, lineage)
    p = registry.decide(ctx.run_id, verdict["promote"], verdict["reason"], lineage, verdict)
    result = PromotionResult(policy_id=p.policy_id, parent_id=p.parent_id, status=p.status, reason=p.reason,
                             checks=p.metrics.get("gate", verdict)["checks"],
                             metrics={"gate/promoted": float(p.status == "champion")})
    create_markdown_artifact(key="promotion-gate", markdown=gate_markdown(result), description=gate_line(result))
    return result


def policies_table(policies: list[Policy]) -> list[str]:
    """`rlaif policies`: the lineage, each policy with its status, reason and headline figures."""
    out = [f"{'policy':<24}{'parent':<24}{'status':<11}{'win rate vs parent (95% CI, n)':<34}{'KL (nats)':<11}"
           f"changed, reason"]
    for p in policies:
        m = p.metrics
        wr = (f"{fmt(m['eval/win_rate'])} ({fmt(m['eval/win_rate_ci_low'])}-{fmt(m['eval/win_rate_ci_high'])}, "
              f"n={m.get('eval/compared')})" if "eval/win_rate" in m else "-")
        out.append(f"{p.policy_id:<24}{p.parent_id:<24}{p.status:<11}{wr:<34}{fmt(m.get('eval/kl', '-')):<11}"
                   f"{p.changed_at:%Y-%m-%d %H:%M}, {p.reason}")
    return out


def cli_lineage(constitution_sha: str) -> Lineage:
    """The lineage of a change made by hand (`rlaif promote`, `rlaif rollback`)."""
    return Lineage(run_id="cli-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S"),
                   constitution_sha=constitution_sha)


# -- export -----------------------------------------------------------------------------------
def export_policy(data: str | Path, policy_id: str, out: str | Path) -> Path:
    """A servable Hugging Face folder of a registered policy: its weights (safetensors), its
    tokenizer and chat template, a generation config holding only the model's own tokens, the
    licence files of the base and judge models, and a model card (README.md)."""
    registry = Registry(data)
    p = registry.get(policy_id)
    src = Path(p.checkpoint)
    if not (src / "config.json").exists():
        raise RunError(f"policy {policy_id}: no model at {p.checkpoint}")
    lineage = json.loads((src / "lineage.json").read_text()) if (src / "lineage.json").exists() else {}
    out = Path(out)
    if out.exists() and any(out.iterdir()) and "rlaif" not in _card_header(out):
        raise RunError(f"export: {out} exists and is not an earlier export (no rlaif model card in it); "
                       "name a new folder: an export replaces its folder whole")

    def write(d: Path) -> None:
        for name in MODEL_FILES:
            if (src / name).exists():
                shutil.copy2(src / name, d / name)
        # PPO's sampling settings are the run's, not the model's: a server's defaults must not
        # inherit them; keep only the tokens a generator needs to stop and pad
        gen = json.loads((src / "generation_config.json").read_text()) if (src / "generation_config.json").exists() else {}
        gen = {k: v for k, v in gen.items() if k in ("bos_token_id", "eos_token_id", "pad_token_id",
                                                      "decoder_start_token_id", "transformers_version")}
        (d / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        notices = []
        for role, name in (("base", p.base_model), ("judge", lineage.get("judge_model"))):
            folder = resolve_model(name) if name else None
            for f in sorted(folder.glob("*")) if folder else []:
                if f.name.upper().startswith(("LICENSE", "NOTICE", "GEMMA_TERMS", "README.UPSTREAM")):
                    shutil.copy2(f, d / f"{role}-{f.name}")
                    notices.append(f"{role}-{f.name}")
        (d / "README.md").write_text(model_card(registry, p, lineage, notices))

    return write_dir_atomic(out, write)


def _card_header(folder: Path) -> str:
    card = folder / "README.md"
    return card.read_text(errors="replace")[:300] if card.is_file() else ""


def model_card(registry: Registry, p: Policy, lineage: dict, notices: list[str]) -> str:
    chain, q = [], p
    while True:  # the policy, its parent, ... back to the base model
        chain.append(q)
        if q.parent_id == BASE:
            break
        q = registry.get(q.parent_id, p.constitution_sha)
    store = Store(registry.store.root)

    def pairs_used(q: Policy) -> str:
        """The preference pairs q's reward model was trained on (its lineage: the parts it read
        and the pair ids it kept), by the run that labelled them."""
        own = Path(q.checkpoint, "lineage.json")
        rm = Path(json.loads(own.read_text()).get("reward_model", ""), "lineage.json") if own.is_file() else None
        rm = json.loads(rm.read_text()) if rm and rm.is_file() else {}
        parts = [i for i in rm.get("inputs", []) if Path(i).parent.parent.name == "preferences" and Path(i).exists()]
        used = store.read_parts("preferences", parts) if parts else None
        used = used[used["pair_id"].isin(set(rm.get("preference_pair_ids", [])))] if used is not None else []
        if not len(used):
            return "not found in the store"
        return f"{len(used)}: " + ", ".join(f"`{r}` {n}" for r, n in used["run_id"].value_counts().sort_index().items())

    constitution_path = lineage.get("constitution_path")
    try:
        c = load_constitution(constitution_path) if constitution_path else None
    except Exception:  # the file moved or changed since: the card says so below
        c = None
    m = p.metrics
    judge = lineage.get("judge_model", "unknown")
    lines = [
        "---", f"base_model: {p.base_model}", f"license: {LICENCES.get(p.base_model, 'other').split(' ')[0]}",
        "tags: [rlaif, constitutional-ai, ppo]", "---", "",
        f"# Policy `{p.policy_id}`", "",
        f"A policy trained by RLAIF (Constitutional-AI style) with the `rlaif` pipeline. Status in the registry: "
        f"**{p.status}** ({p.reason}). Its weights are a plain model (LoRA merged), loadable with "
        "transformers (`AutoModelForCausalLM.from_pretrained`) and servable with `vllm serve`.", "",
        "## Constitution", "",
        f"- sha: `{p.constitution_sha}`",
    ]
    if c is not None and c.sha == p.constitution_sha:
        lines += [f"- name: {c.name} v{c.version}", "- principles:",
                  *[f"  - `{pr.id}`: {pr.preference_question}" for pr in c.principles]]
    else:
        lines += [f"- the file `{constitution_path}` no longer has this sha; its principles are not shown"]
    lines += ["", "## Lineage", "",
              "Each policy was trained (PPO against a reward model) from the one below it, on preference pairs "
              f"labelled by the judge `{judge}` on the samples of the runs named.", "",
              "| policy | trained from | status | preference pairs of its reward model, by run |", "|---|---|---|---|",
              *[f"| `{q.policy_id}` | `{q.parent_id}` | {q.status} | {pairs_used(q)} |" for q in chain],
              f"| `{BASE}` | `{p.base_model}` | the base model | |", "",
              "## Evaluation against its parent (held-out prompts)", ""]
    if "eval/win_rate" in m:
        lines += [f"- win rate {fmt(m['eval/win_rate'])} (95% CI {fmt(m['eval/win_rate_ci_low'])} to "
                  f"{fmt(m['eval/win_rate_ci_high'])}, n={m.get('eval/compared')}, judged in both orders, a tie "
                  "counted half)",
                  f"- KL to the parent {fmt(m.get('eval/kl'))} nats per response (95% CI {fmt(m.get('eval/kl_ci_low'))} "
                  f"to {fmt(m.get('eval/kl_ci_high'))})",
                  f"- judge position consistency {fmt(m.get('eval/position_consistency'))} (a judge that often "
                  "flips with the order is near chance: read the win rate with care)"]
    for check in m.get("gate", {}).get("checks", []):
        lines.append(f"- gate, {check['check']}: {'passed' if check['passed'] else 'failed'} ({check['detail']})")
    lines += ["", "## Licences", "",
              f"- base model `{p.base_model}`: {LICENCES.get(p.base_model, 'see its own licence')}",
              f"- judge `{judge}`: {LICENCES.get(judge, 'see its own licence')}. The training data are this judge's "
              "outputs; its terms may cover models trained on them.",
              *([f"- copied here: {', '.join(f'`{n}`' for n in notices)}"] if notices else []), ""]
    return "\n".join(lines)
