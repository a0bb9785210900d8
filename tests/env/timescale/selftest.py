#!/usr/bin/env python3
"""Developer check of the TimescaleDB test server (not run by the harness).

Needs psycopg 3 (pip install 'psycopg[binary]'), which uses the extended query protocol
(Parse/Bind/Execute/Sync) for parameterised queries, like sqlx.

    python3 selftest.py postgres://postgres:postgres@127.0.0.1:PORT/postgres [--crash]

--crash also checks that a query that crashes the WASM instance costs only that connection:
the server reopens PGlite from its data dir and the data is still there.
Prints 'N passed, N failed'.
"""
import sys
import threading
import time

import psycopg
from psycopg import errors

URL = sys.argv[1]
MODE_TXN = "--transaction" in sys.argv  # server runs in transaction mode
results = []


def check(name, fn):
    t = time.time()
    try:
        fn()
        results.append((name, True))
        print(f"ok   {name} ({time.time() - t:.2f}s)")
    except Exception as e:  # noqa: BLE001
        results.append((name, False))
        print(f"FAIL {name}: {type(e).__name__}: {e}")


def conn(**kw):
    return psycopg.connect(URL, autocommit=True, connect_timeout=10, **kw)


def t_basic():
    with conn() as c:
        assert c.execute("select 1").fetchone() == (1,)
        assert c.execute("show search_path").fetchone() == ("public",)
        assert c.execute("select %s::int + %s", [40, 2]).fetchone() == (42,)
        c.execute("drop table if exists st_ticks cascade")
        c.execute("create table st_ticks (time timestamptz not null, symbol text not null, price double precision)")
        c.execute("select create_hypertable('st_ticks', by_range('time', interval '1 day'))")


def t_insert_params():
    with conn() as c:
        with c.cursor() as cur:
            rows = [(f"{d} days", "BTC", 100.0 + d) for d in range(0, 30)]
            cur.executemany("insert into st_ticks values (now() - %s::interval, %s, %s)", rows)
        assert c.execute("select count(*) from st_ticks").fetchone() == (30,)
        n = c.execute("select count(*) from show_chunks('st_ticks')").fetchone()[0]
        assert n >= 29, n


def t_big_messages():
    with conn() as c:
        big = "x" * 300_000
        assert c.execute("select length(%s)", [big]).fetchone() == (300_000,)  # > 64 KiB Bind
        assert c.execute(f"select length('{big}')").fetchone() == (300_000,)  # > 64 KiB Parse
        assert c.execute(f"select length('{big}')", prepare=False).fetchone() == (300_000,)
        with c.cursor() as cur:  # simple protocol, > 64 KiB Query
            cur.execute(psycopg.sql.SQL(f"select length('{big}')"), prepare=False)
        r = c.execute("select repeat('y', 3000000)").fetchone()[0]  # 3 MB result
        assert len(r) == 3_000_000


def t_many_params():
    with conn() as c:
        n = 30000
        sql = "select count(*) from (values " + ",".join(["(%s::int)"] * n) + ") v"
        assert c.execute(sql, list(range(n))).fetchone() == (n,)
        n = 65535  # protocol maximum (int16 count)
        sql = "select count(*) from (values " + ",".join(["(%s::int)"] * n) + ") v"
        assert c.execute(sql, list(range(n))).fetchone() == (n,)


def t_retention():
    with conn() as c:
        job = c.execute("select add_retention_policy('st_ticks', interval '7 days')").fetchone()[0]
        rows = c.execute("select job_id, proc_name, hypertable_name from timescaledb_information.jobs where job_id = %s", [job]).fetchall()
        assert rows == [(job, "policy_retention", "st_ticks")], rows
        before = c.execute("select count(*) from show_chunks('st_ticks')").fetchone()[0]
        c.execute("call run_job(%s)", [job])
        after = c.execute("select count(*) from show_chunks('st_ticks')").fetchone()[0]
        assert after < before and after <= 9, (before, after)
        assert c.execute("select count(*) from st_ticks where time < now() - interval '8 days'").fetchone() == (0,)
        c.execute("select remove_retention_policy('st_ticks')")


def t_cagg():
    with conn() as c:
        c.execute("""create materialized view st_daily with (timescaledb.continuous) as
                     select time_bucket('1 day', time) as bucket, symbol, avg(price) as avg_price
                     from st_ticks group by 1, 2 with no data""")
        job = c.execute("""select add_continuous_aggregate_policy('st_daily', start_offset => interval '30 days',
                           end_offset => interval '1 hour', schedule_interval => interval '1 hour')""").fetchone()[0]
        c.execute("call run_job(%s)", [job])
        n = c.execute("select count(*) from st_daily").fetchone()[0]
        assert n >= 7, n
        c.execute("call refresh_continuous_aggregate('st_daily', null, null)")


def t_compression():
    with conn() as c:
        c.execute("alter table st_ticks set (timescaledb.compress, timescaledb.compress_segmentby = 'symbol')")
        job = c.execute("select add_compression_policy('st_ticks', interval '2 days')").fetchone()[0]
        c.execute("call run_job(%s)", [job])
        n = c.execute("select count(*) from timescaledb_information.chunks where hypertable_name = 'st_ticks' and is_compressed").fetchone()[0]
        assert n >= 1, n
        assert c.execute("select count(*) from st_ticks").fetchone()[0] >= 7


def t_same_statement_names():
    # psycopg names prepared statements _pg3_0, _pg3_1, ... per connection (sqlx: sqlx_s_1, ...):
    # two consecutive clients must both be able to prepare the same names.
    for _ in range(2):
        c = conn(prepare_threshold=0)
        for i in range(3):
            assert c.execute("select %s::int * 2", [i]).fetchone() == (i * 2,)
        names = [r[0] for r in c.execute("select name from pg_prepared_statements").fetchall()]
        assert sorted(n[-6:] for n in names) == ["_pg3_0", "_pg3_1"], names
        c.execute("set statement_timeout = '5s'")
        c.execute("begin")  # left open: the server must roll it back when the client goes
        c.execute("insert into st_ticks values (now(), 'LEAK', 1)")
        c.close()  # not `with conn()`: psycopg would COMMIT on leaving the block
    with conn() as c:
        if not MODE_TXN:
            assert c.execute("show statement_timeout").fetchone() == ("0",), c.execute("show statement_timeout").fetchone()
        assert c.execute("show search_path").fetchone() == ("public",)
        assert c.execute("select count(*) from st_ticks where symbol = 'LEAK'").fetchone() == (0,)


def t_copy_from_stdin():
    with conn() as c:
        try:
            with c.cursor() as cur:
                with cur.copy("COPY st_ticks FROM STDIN") as cp:
                    cp.write_row(("2024-01-01", "X", 1.0))
            raise AssertionError("COPY FROM STDIN did not fail")
        except errors.FeatureNotSupported as e:
            assert "COPY" in str(e)
        assert c.execute("select 1").fetchone() == (1,)  # connection still usable
        with c.cursor() as cur:  # COPY TO STDOUT works
            with cur.copy("COPY (select 1 union all select 2) TO STDOUT") as cp:
                data = b"".join(bytes(b) for b in cp)
        assert data == b"1\n2\n", data


def t_errors_recover():
    with conn() as c:
        try:
            c.execute("select * from no_such_table where x = %s", [1])
            raise AssertionError("no error")
        except errors.UndefinedTable:
            pass
        assert c.execute("select %s::text", ["fine"]).fetchone() == ("fine",)
        c.autocommit = False
        try:
            c.execute("select 1/0")
        except errors.DivisionByZero:
            c.rollback()
        assert c.execute("select 2").fetchone() == (2,)
        c.rollback()


def t_queue():
    first = conn()
    first.execute("select 1")
    got = {}

    def second():
        t = time.time()
        with conn() as c2:
            got["waited"] = time.time() - t
            got["val"] = c2.execute("select 7").fetchone()[0]

    th = threading.Thread(target=second)
    th.start()
    time.sleep(1.5)
    if MODE_TXN:
        th.join(10)
        assert got.get("val") == 7 and got["waited"] < 1.0, got  # idle first client does not block
    else:
        assert "val" not in got, "second client was served while the first was connected"
        first.execute("select 2")  # the first client still works
    first.close()
    th.join(10)
    assert got.get("val") == 7, got
    if not MODE_TXN:
        assert got["waited"] >= 1.4, got


def t_txn_interleave():
    # transaction mode only: an idle client does not block, an open transaction does
    a, b = conn(prepare_threshold=0), conn(prepare_threshold=0)
    for i in range(3):
        assert a.execute("select %s::int", [i]).fetchone() == (i,)
        assert b.execute("select %s::int + 100", [i]).fetchone() == (i + 100,)
    a.close()
    assert b.execute("select %s::int", [5]).fetchone() == (5,)
    b.close()


def t_crash_restart():
    with conn() as c:
        c.execute("drop table if exists st_keep")
        c.execute("create table st_keep (v int)")
        c.execute("insert into st_keep values (42)")
    deep = "select " + "+".join(str(i) for i in range(20000))
    try:
        with conn() as c:
            c.execute(deep)
        raise AssertionError("deep expression did not crash")
    except (psycopg.OperationalError, psycopg.InternalError):
        pass
    time.sleep(0.5)
    with conn() as c:
        assert c.execute("select v from st_keep").fetchall() == [(42,)]


check("basic + create_hypertable", t_basic)
check("insert with extended-protocol parameters", t_insert_params)
check("messages > 64 KiB", t_big_messages)
check("30000 and 65535 bind parameters", t_many_params)
check("retention policy + jobs + run_job", t_retention)
check("continuous aggregate + refresh policy", t_cagg)
check("compression policy", t_compression)
check("consecutive clients, same prepared statement names, session reset", t_same_statement_names)
check("COPY FROM STDIN refused, connection survives", t_copy_from_stdin)
check("errors in extended protocol recover", t_errors_recover)
check("second connection waits (session) / interleaves (transaction)", t_queue)
if MODE_TXN:
    check("interleaved clients with prepared statements", t_txn_interleave)
if "--crash" in sys.argv:
    check("WASM crash -> restart, data kept", t_crash_restart)
passed = sum(ok for _, ok in results)
print(f"{passed} passed, {len(results) - passed} failed")
sys.exit(0 if passed == len(results) else 1)
