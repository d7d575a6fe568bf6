import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlaif.store import LINEAGE_COLUMNS, SCHEMA_VERSION, TABLES, Lineage, Store, StoreError

SHA_A, SHA_B = "a" * 64, "b" * 64


def responses(n: int, tag: str = "x") -> pd.DataFrame:
    return pd.DataFrame({
        "prompt_id": [f"p{i}" for i in range(n)], "split": "train",
        "prompt": [f"prompt {i}" for i in range(n)], "response_id": [f"p{i}/s0" for i in range(n)],
        "sample_idx": 0, "response": [f"{tag} {i}" for i in range(n)], "n_tokens": 3,
        "has_eos": True, "temperature": 0.8, "seed": 0,
    })


def lineage(sha: str = SHA_A, run: str = "run1") -> Lineage:
    return Lineage(run_id=run, constitution_sha=sha, policy_model="m", judge_model="j", flow_run_id="f")


def test_round_trip_has_lineage_and_pandas_reads_the_table(tmp_path):
    store = Store(tmp_path)
    store.write("responses", responses(5), key="run1/responses", lineage=lineage(), metadata={"k": 1})
    df = store.read("responses")
    assert len(df) == 5
    assert df["response"].tolist() == [f"x {i}" for i in range(5)]
    for col in LINEAGE_COLUMNS:
        assert df[col].notna().all(), col
    assert set(df["run_id"]) == {"run1"} and set(df["constitution_sha"]) == {SHA_A}
    assert (df["schema_version"] == SCHEMA_VERSION).all()
    direct = pd.read_parquet(tmp_path / "responses")
    assert len(direct) == 5 and "constitution_sha" in direct.columns


def test_retried_write_replaces_its_part_instead_of_duplicating(tmp_path):
    store = Store(tmp_path)
    p1 = store.write("responses", responses(4, "first"), key="run1/responses", lineage=lineage())
    p2 = store.write("responses", responses(4, "retry"), key="run1/responses", lineage=lineage())
    assert p1 == p2
    df = store.read("responses")
    assert len(df) == 4 and df["response"].str.startswith("retry").all()
    store.write("responses", responses(2), key="run2/responses", lineage=lineage(run="run2"))
    assert len(store.read("responses")) == 6 and len(store.read("responses", run_id="run2")) == 2


def test_missing_columns_are_rejected_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"missing columns \['seed'\]"):
        Store(tmp_path).write("responses", responses(2).drop(columns="seed"), key="k", lineage=lineage())
    assert not (tmp_path / "responses").exists() or not list((tmp_path / "responses").rglob("*.parquet"))


@pytest.mark.parametrize("crash_point", ["during_write", "before_rename"])
def test_crash_mid_write_leaves_no_partial_part(tmp_path, crash_point):
    store = Store(tmp_path)
    store.write("responses", responses(3, "old"), key="old", lineage=lineage())
    # A real crash: the child process SIGKILLs itself in the middle of a write.
    script = textwrap.dedent(f"""
        import os, signal, sys
        import pyarrow.parquet as pq
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from rlaif import store as st
        from test_store import responses, lineage
        if {crash_point!r} == "during_write":
            real = pq.write_table
            def write_half(table, path, **kw):
                real(table.slice(0, 1), path, **kw)  # some bytes are on disk...
                os.kill(os.getpid(), signal.SIGKILL)  # ...then the process dies
            st.pq.write_table = write_half
        else:
            st.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        st.Store({str(tmp_path)!r}).write("responses", responses(1000, "new"), key="new", lineage=lineage())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    assert [p.name for p in store.parts("responses")] == [Store.part_name("old")]
    assert store.read("responses")["response"].str.startswith("old").all()
    assert len(pd.read_parquet(tmp_path / "responses")) == 3  # pandas skips the dot-prefixed temp file


def test_corrupt_part_is_named_and_the_rest_stays_readable(tmp_path):
    store = Store(tmp_path)
    store.write("responses", responses(3), key="good", lineage=lineage())
    bad = store.table_dir("responses", SHA_A) / "part-corrupt.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(StoreError, match=f"{bad}: not a readable Parquet file"):
        store.read("responses")
    with pytest.warns(UserWarning, match="part-corrupt.parquet"):
        assert len(store.read("responses", skip_bad=True)) == 3


def test_truncated_part_is_named(tmp_path):
    store = Store(tmp_path)
    path = store.write("responses", responses(50), key="k", lineage=lineage())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(StoreError, match="not a readable Parquet file"):
        store.read("responses")


def test_foreign_and_future_parts_are_rejected(tmp_path):
    store = Store(tmp_path)
    d = store.table_dir("responses", SHA_A)
    d.mkdir(parents=True)
    pq.write_table(pa.table({"x": [1, 2]}), d / "part-foreign.parquet")
    with pytest.raises(StoreError, match="part-foreign.parquet: not a 'responses' part"):
        store.read("responses")
    (d / "part-foreign.parquet").unlink()
    path = store.write("responses", responses(2), key="k", lineage=lineage())
    t = pq.read_table(path)
    pq.write_table(t.replace_schema_metadata({**t.schema.metadata, b"rlaif.schema_version": b"99"}), path)
    with pytest.raises(StoreError, match="schema_version 99 is newer"):
        store.read("responses")


def test_preferences_part_written_as_responses_is_rejected(tmp_path):
    store = Store(tmp_path)
    path = store.write("responses", responses(2), key="k", lineage=lineage())
    with pytest.raises(StoreError, match="not a 'preferences' part"):
        store.read_part("preferences", path)


def test_filtered_read_opens_only_that_constitution(tmp_path):
    store = Store(tmp_path)
    store.write("responses", responses(3), key="a", lineage=lineage(SHA_A))
    store.write("responses", responses(2), key="b", lineage=lineage(SHA_B))
    # A corrupt file under constitution B must not affect a read of constitution A.
    (store.table_dir("responses", SHA_B) / "part-corrupt.parquet").write_bytes(b"junk")
    df = store.read("responses", constitution_sha=SHA_A)
    assert len(df) == 3 and set(df["constitution_sha"]) == {SHA_A}
    with pytest.raises(StoreError):
        store.read("responses", constitution_sha=SHA_B)


def test_every_table_has_a_schema_with_lineage():
    for table in TABLES:
        from rlaif.store import schema
        assert schema(table).names[: len(LINEAGE_COLUMNS)] == LINEAGE_COLUMNS
    with pytest.raises(KeyError, match="unknown table 'nope'"):
        Store("x").read("nope")


def test_an_older_part_reads_with_the_columns_added_since_as_nulls(tmp_path):
    store = Store(tmp_path)
    path = store.write("responses", responses(3), key="k", lineage=lineage())
    t = pq.read_table(path)
    # as schema version 2 wrote it: without a column added later
    old = t.drop_columns(["has_eos"]).replace_schema_metadata({**t.schema.metadata, b"rlaif.schema_version": b"2"})
    pq.write_table(old, path)
    df = store.read("responses")
    assert len(df) == 3 and df["has_eos"].isna().all() and (df["response"] == responses(3)["response"]).all()
    # the same gap in a part claiming the current version is damage, not age
    pq.write_table(old.replace_schema_metadata({**t.schema.metadata}), path)
    with pytest.raises(StoreError, match=r"missing columns \['has_eos'\]"):
        store.read("responses")


def test_a_version_3_eval_part_reads_its_renamed_columns_under_their_new_names(tmp_path):
    """Version 3 wrote the judge's ratings as *_harmless and the k1 KL estimate as policy_kl; from
    4 policy_kl is the exact KL. An old part keeps its numbers under the names that mean them."""
    from rlaif.store import TABLES

    store = Store(tmp_path)
    cols = {n: [None, None] for n, _ in TABLES["eval"]}
    cols.update(prompt_id=["p1", "p2"], policy_adherence=[0.5, -0.5], policy_kl=[0.3, -0.1], final=[True, True])
    path = store.write("eval", pd.DataFrame(cols), key="k", lineage=lineage())
    t = pq.read_table(path)
    v3 = t.drop_columns(["policy_kl_k1", "category", "harmful"])
    v3 = v3.rename_columns(["policy_harmless" if n == "policy_adherence" else n for n in v3.schema.names])
    pq.write_table(v3.replace_schema_metadata({**t.schema.metadata, b"rlaif.schema_version": b"3"}), path)
    df = store.read("eval")
    assert df["policy_adherence"].tolist() == [0.5, -0.5]
    assert df["policy_kl_k1"].tolist() == [0.3, -0.1] and df["policy_kl"].isna().all()  # not the exact KL


def test_a_temporary_is_stale_when_its_writer_is_gone_or_it_is_older_than_the_bound(tmp_path, monkeypatch):
    from rlaif.io import _host, is_stale, temp_path

    def temp(name: str, age_h: float = 0.0) -> Path:
        path = tmp_path / name
        path.write_bytes(b"PAR1")
        os.utime(path, (time.time() - age_h * 3600,) * 2)
        return path

    mine = temp(temp_path(tmp_path / "part-a.parquet").name)  # this live process's
    gone = subprocess.run([sys.executable, "-c", "from rlaif.io import temp_path; print(temp_path('part-b.parquet'))"],
                          capture_output=True, text=True, check=True).stdout.strip()  # a process that has exited
    host, pid, start, _ = mine.name.split(".tmp-")[1].split("~")
    assert not is_stale(mine)
    assert is_stale(temp(gone))
    assert is_stale(temp(f".part-c.parquet.tmp-{host}~{pid}~{int(start) - 3600}~0"))  # the pid reused by another
    assert is_stale(temp(mine.name, age_h=25))  # a live writer, but past the bound
    assert not is_stale(temp(f".part-d.parquet.tmp-{_host()}x~{pid}~{start}~0"))  # another host: only its age tells
    assert is_stale(temp(f".part-d.parquet.tmp-{_host()}x~{pid}~{start}~0", age_h=25))
    assert not is_stale(temp(".part-e.parquet.tmp-0123abcd", age_h=23))  # named before writers were: age only
    assert is_stale(temp(".part-e.parquet.tmp-0123abcd", age_h=25))
    for name in ("part-f.parquet", ".cache", ".launch"):  # not temporaries, however old
        assert not is_stale(temp(name, age_h=1000))
    # a folder (rlaif.io.write_dir_atomic) goes whole; a live writer's stays
    run = tmp_path / "checkpoints" / "abc" / "run"
    dead, alive = run / f".policy.tmp-{gone.split('.tmp-')[1]}", run / f".sft.tmp-{host}~{pid}~{start}~x"
    for d in (dead, alive):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "model.safetensors").write_bytes(b"w")
    os.utime(mine)  # young again
    swept = Store(tmp_path).sweep_stale()
    assert dead in swept and not dead.exists() and alive.exists() and mine not in swept
    assert not [p for p in swept if dead in p.parents]
    monkeypatch.setenv("RLAIF_STALE_TEMP_HOURS", "0.5")  # the bound is the operator's
    assert is_stale(temp(f".part-d.parquet.tmp-{_host()}x~{pid}~{start}~0", age_h=1))
    assert not is_stale(temp(mine.name, age_h=0.25))


WRITER = textwrap.dedent(f"""
    import sys
    from unittest import mock
    import pyarrow.parquet as pq
    sys.path.insert(0, {str(Path(__file__).parent)!r})
    from rlaif.store import Store
    from test_store import lineage, responses
    real = pq.write_table
    def write_then_wait(table, where, **kw):
        real(table, where, **kw)  # the whole temporary part is on disk, not yet renamed into place
        print(where, flush=True)
        sys.stdin.readline()  # until the test says go on
    with mock.patch.object(pq, "write_table", write_then_wait):
        Store(sys.argv[1]).write("responses", responses(3, sys.argv[2]), key=sys.argv[2], lineage=lineage())
""")


def test_a_sweep_removes_a_killed_writers_temporary_and_never_a_live_writers(tmp_path):
    """Two real writers: one SIGKILLed mid-write, one alive and still writing. The sweep takes
    the first's temporary part only; the second then finishes its part; readers see neither."""
    store = Store(tmp_path)
    store.write("responses", responses(2, "done"), key="done", lineage=lineage())
    killed, live = (subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), tag], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE) for tag in ("killed", "live"))
    try:
        temps = {w.pid: Path(w.stdout.readline().strip()) for w in (killed, live)}
        assert all(t.name.startswith(".part-") and t.exists() for t in temps.values())
        killed.kill()
        os.waitid(os.P_PID, killed.pid, os.WEXITED | os.WNOWAIT)  # dead, not reaped yet: a zombie still has its pid
        assert store.sweep_stale() == [temps[killed.pid]]
        assert not temps[killed.pid].exists() and temps[live.pid].exists()
        assert store.read("responses")["response"].tolist() == ["done 0", "done 1"]  # no temporary is read
        assert len(pd.read_parquet(tmp_path / "responses")) == 2
        live.stdin.write("go on\n")
        live.stdin.flush()
        assert live.wait(timeout=60) == 0
    finally:
        for w in (killed, live):
            w.kill()
            w.wait()
    assert not temps[live.pid].exists()
    assert sorted(store.read("responses")["response"]) == ["done 0", "done 1", "live 0", "live 1", "live 2"]
    assert len(pd.read_parquet(tmp_path / "responses")) == 5
    assert store.sweep_stale() == [] and not list(tmp_path.rglob(".*"))
