"""Property-based tests (hypothesis) for the store and the constitution loader: for any
sequence of writes the store reads back exactly the last write of each key, and for any file
the loader returns a constitution or raises ConstitutionError, never anything else."""

from __future__ import annotations

import string

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from constitution import load_constitution
from constitution.loader import FORBIDDEN, ConstitutionError
from rlaif.store import TABLES, Lineage, Store

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)  # any unicode, NUL too
prob = st.floats(0, 1)
pref_row = st.fixed_dictionaries({
    "prompt": text, "response_a": text, "response_b": text, "p_a_first": prob, "p_a_second": prob,
    "principle_ids": st.lists(st.sampled_from(["a", "b", "c"]), max_size=3),
    "rationales": st.lists(text, max_size=2), "valid": st.booleans(),
})
PREFERENCE_COLUMNS = [n for n, _ in TABLES["preferences"]]
# a write: (key, constitution, rows)
write_op = st.tuples(st.sampled_from(["k1", "k2", "k3"]), st.sampled_from(["c" * 64, "d" * 64]),
                     st.lists(pref_row, min_size=0, max_size=5))


def preferences(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{**r, "pair_id": f"p{i}", "prompt_id": f"q{i}", "chosen": r["response_a"],
                          "rejected": r["response_b"], "p_chosen": (r["p_a_first"] + r["p_a_second"]) / 2,
                          "position_consistent": True, "judge_backend": "transformers", "template_version": "v1",
                          "score_a": None, "score_b": None, "invalid_reason": None if r["valid"] else "garbage"}
                         for i, r in enumerate(rows)], columns=PREFERENCE_COLUMNS)


def as_set(rows) -> list[tuple]:
    """Rows as sortable tuples of what was written (lists as tuples, NUL-safe reprs)."""
    return sorted(repr((r["run_id"], r["prompt"], r["response_a"], r["response_b"], r["p_a_first"],
                        r["p_a_second"], bool(r["valid"]), tuple(r["principle_ids"]), tuple(r["rationales"])))
                  for r in rows)


@SETTINGS
@given(ops=st.lists(write_op, min_size=1, max_size=8))
def test_store_reads_back_the_last_write_of_each_key(tmp_path_factory, ops):
    store = Store(tmp_path_factory.mktemp("store"))
    last: dict[tuple[str, str], list[dict]] = {}
    for key, sha, rows in ops:
        store.write("preferences", preferences(rows), key=key, lineage=Lineage(run_id=key, constitution_sha=sha))
        last[(key, sha)] = rows  # a retried key replaces its part, under its own constitution
    for sha in ("c" * 64, "d" * 64):  # no row lost, duplicated, changed or read from the other folder
        got = store.read("preferences", constitution_sha=sha)
        want = [{**r, "run_id": k} for (k, s), rows in last.items() if s == sha for r in rows]
        assert as_set(got.to_dict("records")) == as_set(want)
    assert len(store.read("preferences")) == sum(len(r) for r in last.values())


principle = st.fixed_dictionaries({
    "id": st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,15}\Z"),
    "critique_request": st.text(string.ascii_letters + " .,", min_size=1, max_size=60).filter(str.strip),
    "revision_request": st.text(string.ascii_letters + " .,", min_size=1, max_size=60).filter(str.strip),
    "preference_question": st.text(string.ascii_letters + " ", min_size=1, max_size=60).map(lambda s: s + "?"),
})
valid_constitution = st.fixed_dictionaries({
    "name": st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,15}\Z"), "version": st.integers(1, 99),
    "description": st.text(string.ascii_letters + " ", min_size=1, max_size=60).filter(str.strip),
    "principles": st.lists(principle, min_size=1, max_size=4, unique_by=lambda p: p["id"]),
})


@SETTINGS
@given(doc=valid_constitution, flow=st.booleans())
def test_any_valid_constitution_loads_and_its_sha_ignores_layout(tmp_path_factory, doc, flow):
    d = tmp_path_factory.mktemp("c")
    (d / "a.yaml").write_text(yaml.safe_dump(doc, sort_keys=True))
    (d / "b.yaml").write_text("# a comment\n" + yaml.safe_dump(doc, sort_keys=False, default_flow_style=flow))
    a, b = load_constitution(d / "a.yaml"), load_constitution(d / "b.yaml")
    assert a.sha == b.sha and [p.id for p in a.principles] == [p["id"] for p in doc["principles"]]


@SETTINGS
@given(doc=valid_constitution, field=st.sampled_from(["critique_request", "revision_request", "preference_question"]),
       bad=st.sampled_from(FORBIDDEN))
def test_a_principle_with_a_prompt_format_token_is_named(tmp_path_factory, doc, field, bad):
    doc["principles"][0][field] = f"{bad} {doc['principles'][0][field]}"
    path = tmp_path_factory.mktemp("c") / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConstitutionError, match=rf"principles\.0\.{field}: contains"):
        load_constitution(path)


yaml_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                          max_leaves=10)


@SETTINGS
@given(raw=st.one_of(st.binary(max_size=200), text.map(str.encode),
                     yaml_value.map(lambda v: yaml.safe_dump(v).encode()),
                     valid_constitution.flatmap(lambda d: st.sampled_from(sorted(d)).map(
                         lambda k: yaml.safe_dump({**d, k: None}).encode()))))
def test_any_file_loads_or_raises_a_constitution_error_naming_it(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("c") / "x.yaml"
    path.write_bytes(raw)
    try:
        load_constitution(path)
    except ConstitutionError as e:
        assert str(path) in str(e) and e.errors
