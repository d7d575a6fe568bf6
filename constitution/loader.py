"""Load and validate constitution files.

Schema (YAML):

    name: harmless                # lowercase letters, digits, dashes
    version: 1                    # integer >= 1
    description: what behaviour this constitution asks for
    principles:                   # at least one
      - id: no-dangerous-help     # unique; lowercase letters, digits, dashes
        critique_request: ask a critic to point out where the response falls short
        revision_request: ask for a rewrite that meets the principle
        preference_question: a question whose answer is one of two responses, ending in '?'
    examples:                     # optional few-shot examples for critique/revision
      - principle_id: no-dangerous-help
        prompt: ...
        response: ...
        critique: ...
        revision: ...

Every error is reported at once, each as `file: field: reason`. The `constitution_sha` is a
hash of the validated content, so comments and formatting do not change it.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import yaml
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlaif import paths

SHIPPED_DIR = Path(__file__).parent
MAX_FILE_BYTES = 256 * 1024
MAX_TEXT_CHARS = 2000
# Strings that would let a principle break the judge's prompt format, whatever the model: the
# option labels, the raw judge prompt's turn markers (judges.templates.raw_prompt writes
# "User:"/"Assistant:"), hh-rlhf's "Human:" and ChatML's tokens. The markers of the models a
# run really uses (their chat templates' special tokens) are checked by `check_markers`.
FORBIDDEN = ("(A)", "(B)", "<|im_start|>", "<|im_end|>", "<|endoftext|>", "Human:", "User:", "Assistant:")

_ID = r"^[a-z0-9][a-z0-9-]*$"


def _check_text(v: str) -> str:
    v = v.strip()
    if not v:
        raise ValueError("must not be empty")
    if len(v) > MAX_TEXT_CHARS:
        raise ValueError(f"is {len(v)} characters; the limit is {MAX_TEXT_CHARS}")
    bad = [s for s in FORBIDDEN if s in v]
    if bad:
        raise ValueError(f"contains {bad[0]!r}, which would break the judge's prompt format")
    return v


def _is_question(v: str) -> str:
    if not v.endswith("?"):
        raise ValueError("must be a question ending with '?'")
    return v


Text = Annotated[str, AfterValidator(_check_text)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Principle(_Strict):
    id: str = Field(pattern=_ID)
    critique_request: Text
    revision_request: Text
    preference_question: Annotated[Text, AfterValidator(_is_question)]


class Example(_Strict):
    principle_id: str
    prompt: Text
    response: Text
    critique: Text
    revision: Text


class Constitution(_Strict):
    name: str = Field(pattern=_ID)
    version: int = Field(ge=1)
    description: Text
    principles: list[Principle] = Field(min_length=1)
    examples: list[Example] = []

    @model_validator(mode="after")
    def _ids(self) -> "Constitution":
        ids = [p.id for p in self.principles]
        dups = sorted({i for i in ids if ids.count(i) > 1})
        if dups:
            raise ValueError(f"duplicate principle ids: {', '.join(dups)}")
        unknown = sorted({e.principle_id for e in self.examples} - set(ids))
        if unknown:
            raise ValueError(f"examples refer to unknown principle ids: {', '.join(unknown)}")
        return self

    @property
    def sha(self) -> str:
        """Content hash: the `constitution_sha` written into every row and checkpoint."""
        canon = json.dumps(self.model_dump(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canon.encode()).hexdigest()

    def principle(self, pid: str) -> Principle:
        return next(p for p in self.principles if p.id == pid)

    def sample_principles(self, rng: random.Random, k: int = 1) -> list[Principle]:
        """k distinct principles, drawn with the caller's seeded RNG (one draw per label)."""
        return rng.sample(self.principles, min(k, len(self.principles)))


class ConstitutionError(ValueError):
    def __init__(self, path: Path | str, errors: list[str]):
        self.path, self.errors = str(path), errors
        super().__init__("\n".join(f"{path}: {e}" for e in errors))


def shipped_constitutions() -> list[str]:
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))


def resolve_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    return SHIPPED_DIR / f"{name_or_path}.yaml"


CONSTITUTION_DIRS_ENV = "RLAIF_CONSTITUTION_DIRS"


def check_allowed(name_or_path: str | Path) -> Path:
    """A constitution named by a flow parameter (a deployment run, which anyone who can reach
    the Prefect API may start) must lie inside the shipped folder or one listed in
    RLAIF_CONSTITUTION_DIRS, symlinks resolved (rlaif.paths.check_allowed)."""
    return paths.check_allowed(resolve_path(name_or_path), parameter="constitution", env=CONSTITUTION_DIRS_ENV,
                               shipped=[SHIPPED_DIR], error=lambda m: ConstitutionError(name_or_path, [m]))


def check_markers(constitution: Constitution, path: str | Path, markers, whose: str) -> None:
    """Raise a ConstitutionError naming every text of `constitution` that contains one of
    `markers`: the prompt markers of the model `whose` (its chat template's special tokens,
    judges.templates.prompt_markers), which a principle could use to forge a turn."""
    errors = []
    for i, p in enumerate(constitution.principles):
        for field in ("critique_request", "revision_request", "preference_question"):
            errors += _marker_errors(f"principles.{i}.{field}", getattr(p, field), markers, whose)
    for i, e in enumerate(constitution.examples):
        for field in ("prompt", "response", "critique", "revision"):
            errors += _marker_errors(f"examples.{i}.{field}", getattr(e, field), markers, whose)
    if errors:
        raise ConstitutionError(path, errors)


def _marker_errors(field: str, text: str, markers, whose: str) -> list[str]:
    bad = [m for m in markers if m and m in text]
    if not bad:
        return []
    return [f"{field}: contains {bad[0]!r}, a prompt marker of {whose}, which would break its prompt format"]


def load_constitution(name_or_path: str | Path) -> Constitution:
    """Load a shipped constitution by name (`harmless`) or any file by path."""
    path = resolve_path(name_or_path)
    if not path.is_file():
        raise ConstitutionError(path, [f"no such file (shipped: {', '.join(shipped_constitutions())})"])
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ConstitutionError(path, [f"file is {size} bytes; the limit is {MAX_FILE_BYTES}"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConstitutionError(path, [f"not UTF-8 text ({e.reason} at byte {e.start})"]) from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConstitutionError(path, [f"invalid YAML: {where}{getattr(e, 'problem', e)}"]) from e
    if not isinstance(raw, dict):
        raise ConstitutionError(path, [f"top level must be a mapping, got {type(raw).__name__}"])
    try:
        return Constitution.model_validate(raw)
    except ValidationError as e:
        errors = []
        for err in e.errors():
            field = ".".join(str(x) for x in err["loc"]) or "(top level)"
            msg = err["msg"].removeprefix("Value error, ")
            errors.append(f"{field}: {msg}")
        raise ConstitutionError(path, errors) from e
