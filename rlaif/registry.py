"""The policies registry: which trained policy each constitution's service samples from.

A policy is the folder a training run saved (LoRA already merged: a plain Hugging Face model,
training.common.save_model); its id is that run's id. Its life is a log of events in the
`policies` table of the Parquet store (rlaif.store), one part per change:

    <data>/policies/<sha12>/part-<hash of seq>.parquet      the events, in `seq` order
    <data>/policies/.lock                                   held while a change is made

    registered  -> candidate    a training run's policy, with its evaluation against the champion
    promoted    -> champion     the gate passed, or `rlaif promote`, or a rollback restored it
    rejected    -> rejected     the gate failed (the reason says which check), or it was rolled back
    retired     -> retired      a newer champion replaced it

A policy's status is that of its last event. The champion of a constitution and base model is
the one policy whose status is champion; with none, the service samples the base model itself.

Atomicity: a change reads the log, checks it, and writes its rows as one part, all under an
exclusive lock on `.lock` (fcntl: released by the kernel when the holder dies, so a killed
run never leaves it held). A promotion's part holds both the new champion's row and the old
one's `retired` row, so no reader ever sees two champions, and two runs that decide at once
take turns: the second sees the first's champion. Local file systems only (flock on NFS is
not reliable).
"""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rlaif.store import Lineage, Store, StoreError

BASE = "base"  # the id the registry gives the base model of a chain (never a row of the table)
STATUSES = ("candidate", "champion", "rejected", "retired")


class RegistryError(ValueError):
    """A registry change that cannot be made: an unknown policy, nothing to roll back."""


@dataclass(frozen=True)
class Policy:
    policy_id: str
    constitution_sha: str
    base_model: str  # the chain's root: what the first policy of the chain was trained from
    parent_id: str  # the champion it was trained from (BASE: the base model)
    checkpoint: str  # the model folder
    status: str
    reason: str
    changed_at: pd.Timestamp
    metrics: dict = field(default_factory=dict)  # its evaluation against its parent, and the gate's verdict
    replaced: str = ""  # for a champion: the champion it replaced (BASE: none); what a rollback restores


class Registry:
    def __init__(self, data: str | Path):
        self.store = Store(data)

    @contextmanager
    def _locked(self):
        path = self.store.table_dir("policies") / ".lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # blocks until the other writer's change is on disk
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- reading -------------------------------------------------------------------------
    def events(self, constitution_sha: str | None = None) -> pd.DataFrame:
        """Every change, oldest first (`seq` orders them within a constitution)."""
        df = self.store.read("policies", constitution_sha=constitution_sha)
        return df.sort_values(["constitution_sha", "seq"], kind="stable").reset_index(drop=True)

    def policies(self, constitution_sha: str | None = None) -> list[Policy]:
        """Every policy in its current state (its last event), in the order they were registered
        (within each constitution)."""
        ev = self.events(constitution_sha)
        return [self._policy(rows) for _, rows in ev.groupby("policy_id", sort=False)]

    @staticmethod
    def _policy(rows: pd.DataFrame) -> Policy:
        """A policy from its events: identity from the first, status from the last, metrics
        merged in order (the evaluation at registration, the gate's verdict at its decision)."""
        first, last = rows.iloc[0], rows.iloc[-1]
        metrics = {}
        for m in rows["metrics"]:
            metrics |= json.loads(m or "{}")
        return Policy(policy_id=first["policy_id"], constitution_sha=first["constitution_sha"],
                      base_model=first["base_model"], parent_id=first["parent_id"], checkpoint=first["checkpoint"],
                      status=last["status"], reason=last["reason"], changed_at=last["created_at"],
                      metrics=metrics, replaced=last["replaced"] or "")

    def get(self, policy_id: str, constitution_sha: str | None = None) -> Policy:
        found = [p for p in self.policies(constitution_sha) if p.policy_id == policy_id]
        if not found:
            raise RegistryError(f"no policy {policy_id!r} in the registry under {self.store.root}"
                                + (f" for constitution sha {constitution_sha[:12]}" if constitution_sha else ""))
        return found[0]

    def champion(self, constitution_sha: str, base_model: str) -> Policy | None:
        """The constitution's champion trained from `base_model` (None: the base model itself)."""
        champs = [p for p in self.policies(constitution_sha) if p.status == "champion" and p.base_model == base_model]
        if len(champs) > 1:  # cannot happen through this class; a hand-edited table could
            raise StoreError(f"{self.store.table_dir('policies', constitution_sha)}: two champions "
                             f"({', '.join(p.policy_id for p in champs)}); fix with `rlaif promote`")
        return champs[0] if champs else None

    # -- changing --------------------------------------------------------------------------
    def _write(self, constitution_sha: str, rows: list[dict], lineage: Lineage) -> None:
        """One change: its rows as one part (one atomic rename), numbered after the last."""
        ev = self.events(constitution_sha)
        seq = int(ev["seq"].max()) + 1 if len(ev) else 0
        df = pd.DataFrame([{"parent_id": "", "base_model": "", "checkpoint": "", "reason": "", "replaced": "",
                            "metrics": "", **r, "seq": seq} for r in rows])
        self.store.write("policies", df, key=f"policies/{seq}", lineage=lineage)

    def register(self, policy_id: str, parent_id: str, base_model: str, checkpoint: str, metrics: dict,
                 lineage: Lineage) -> Policy:
        """A new candidate. Registering an id again (a rerun of its training run) changes nothing."""
        with self._locked():
            known = [p for p in self.policies(lineage.constitution_sha) if p.policy_id == policy_id]
            if known:
                return known[0]
            self._write(lineage.constitution_sha, [dict(
                event="registered", status="candidate", policy_id=policy_id, parent_id=parent_id,
                base_model=base_model, checkpoint=checkpoint, metrics=json.dumps(metrics, default=str),
                reason="trained")], lineage)
            return self.get(policy_id, lineage.constitution_sha)

    def decide(self, policy_id: str, promote: bool, reason: str, lineage: Lineage, verdict: dict | None = None) -> Policy:
        """The gate's verdict on a candidate. A candidate trained from a champion that has been
        replaced since (an overlapping run promoted another) is rejected: it was measured against
        a policy that no longer serves. Deciding a decided policy again changes nothing."""
        sha = lineage.constitution_sha
        with self._locked():
            p = self.get(policy_id, sha)
            if p.status != "candidate":
                return p
            champ = self.champion(sha, p.base_model)
            current = champ.policy_id if champ else BASE
            if promote and current != p.parent_id:
                promote, reason = False, (f"stale: it was evaluated against {p.parent_id}, but {current} became "
                                          "champion while it trained")
            metrics = json.dumps({"gate": verdict or {}}, default=str)
            if not promote:
                self._write(sha, [dict(event="rejected", status="rejected", policy_id=policy_id, reason=reason,
                                       metrics=metrics)], lineage)
            else:
                self._write(sha, self._promotion(p, champ, reason, metrics), lineage)
            return self.get(policy_id, sha)

    @staticmethod
    def _promotion(p: Policy, champ: Policy | None, reason: str, metrics: str = "", replaced: str | None = None) -> list[dict]:
        rows = [dict(event="promoted", status="champion", policy_id=p.policy_id, reason=reason, metrics=metrics,
                     replaced=replaced if replaced is not None else (champ.policy_id if champ else BASE))]
        if champ is not None:
            rows.append(dict(event="retired", status="retired", policy_id=champ.policy_id,
                             reason=f"replaced by {p.policy_id}", replaced=champ.replaced))
        return rows

    def promote(self, policy_id: str, reason: str, lineage_of) -> Policy:
        """Make any policy champion by hand (`rlaif promote`), retiring the current one.
        `lineage_of(constitution_sha)` gives the change's lineage."""
        with self._locked():
            p = self.get(policy_id)
            if p.status == "champion":
                raise RegistryError(f"{policy_id} is already the champion")
            lineage = lineage_of(p.constitution_sha)
            champ = self.champion(p.constitution_sha, p.base_model)
            self._write(p.constitution_sha, self._promotion(p, champ, f"promoted by hand: {reason}"), lineage)
            return self.get(policy_id, p.constitution_sha)

    def rollback(self, constitution_sha: str, base_model: str, reason: str, lineage: Lineage) -> Policy | None:
        """Reject the current champion and restore the one it replaced (None: the base model)."""
        with self._locked():
            champ = self.champion(constitution_sha, base_model)
            if champ is None:
                raise RegistryError(f"nothing to roll back: constitution sha {constitution_sha[:12]} has no champion "
                                    f"trained from {base_model}; the service samples the base model")
            rows = [dict(event="rejected", status="rejected", policy_id=champ.policy_id,
                         reason=f"rolled back: {reason}")]
            previous = None
            if champ.replaced and champ.replaced != BASE:
                previous = self.get(champ.replaced, constitution_sha)
                # it takes back the place it had: what it replaced is what a second rollback restores
                rows.append(dict(event="promoted", status="champion", policy_id=previous.policy_id,
                                 reason=f"restored by rollback of {champ.policy_id}: {reason}",
                                 replaced=self._replaced_before(constitution_sha, previous.policy_id)))
            self._write(constitution_sha, rows, lineage)
            return self.get(previous.policy_id, constitution_sha) if previous else None

    def _replaced_before(self, constitution_sha: str, policy_id: str) -> str:
        """What `policy_id` replaced the last time it became champion."""
        ev = self.events(constitution_sha)
        made = ev[(ev["policy_id"] == policy_id) & (ev["status"] == "champion")]
        return made["replaced"].iloc[-1] if len(made) else BASE
