#!/usr/bin/env python3
"""Real readers on real idsnap output.

Runs `idsnap run` over two connections (two simulated organizations) and two dates, once into
a local folder and once into S3 (the moto server that .ci/test started), then reads the
Hive-partitioned `atlassian_users` dataset back with pyarrow, duckdb and polars, from both
places. It checks row counts per partition, column names and types, and the managed /
unmanaged tallies against what `idsnap run` printed.

Usage (from .ci/test): check_readers.py --idsnap target/debug/idsnap --duckdb-httpfs-python PY
Needs IDSNAP_TEST_S3_ENDPOINT and IDSNAP_TEST_S3_BUCKET in the environment.
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

COLUMNS = [
    "org_id", "account_id", "account_type", "status", "account_status", "membership_status",
    "claim_status", "is_managed", "email", "email_domain", "email_verified", "name", "nickname",
    "added_to_org", "platform_roles", "mfa_enabled", "management_source", "job_title",
    "department", "organization", "location", "time_zone", "resource_count", "scanned_at", "raw",
]
SUMMARY = re.compile(
    r"^(?P<name>.+): published (?P<users>[\d,]+) users \(managed (?P<managed>[\d,]+) / "
    r"unmanaged (?P<unmanaged>[\d,]+) / unknown (?P<unknown>[\d,]+)\)"
)
SLUGS = {"Alpha Org": "alpha-org", "Beta Org": "beta-org"}
DATES = ["2026-06-01", "2026-06-02"]

passed = 0
failures = []


def check(label, got, want):
    global passed
    if got == want:
        passed += 1
    else:
        failures.append(f"{label}: got {got!r}, want {want!r}")
        print(f"FAIL {label}: got {got!r}, want {want!r}", file=sys.stderr)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_simulator(idsnap, org, token, users, seed):
    port = free_port()
    proc = subprocess.Popen(
        [idsnap, "simulate", "--port", str(port), "--users", str(users), "--seed", str(seed),
         "--org-id", org, "--token", token],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"the simulator for {org} did not start")


def config_text(storage, bases):
    lines = [storage, ""]
    for name, (org, env, base, unmanaged) in bases.items():
        lines += [
            "[[connections]]",
            f'name = "{name}"',
            f'org_id = "{org}"',
            f'api_token_env = "{env}"',
            f'api_base_url = "{base}"',
            "allow_insecure_http = true",
            f"scan_unmanaged_users = {'true' if unmanaged else 'false'}",
            "",
        ]
    return "\n".join(lines)


def run(idsnap, config, day, env):
    out = subprocess.run(
        [idsnap, "--config", config, "-q", "run", "--snapshot-date", day, "--accept-drop"],
        capture_output=True, text=True, env=env, check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"idsnap run failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    tallies = {}
    for line in out.stdout.splitlines():
        m = SUMMARY.match(line)
        if m:
            n = lambda k: int(m.group(k).replace(",", ""))
            tallies[(SLUGS[m.group("name")], day)] = (n("users"), n("managed"), n("unmanaged"))
    return tallies


def check_pyarrow_dataset(label, dataset, expected):
    schema = dataset.schema
    check(f"{label} pyarrow columns", schema.names, COLUMNS + ["connection", "snapshot_date"])
    check(f"{label} pyarrow snapshot_date type", schema.field("snapshot_date").type, pa.date32())
    check(f"{label} pyarrow added_to_org type", schema.field("added_to_org").type, pa.timestamp("us", tz="UTC"))
    check(f"{label} pyarrow platform_roles is a list", pa.types.is_list(schema.field("platform_roles").type), True)
    table = dataset.to_table(columns=["connection", "snapshot_date", "is_managed", "claim_status"])
    got = {}
    for row in table.group_by(["connection", "snapshot_date", "claim_status"]).aggregate([("is_managed", "count")]).to_pylist():
        key = (row["connection"], row["snapshot_date"].isoformat())
        users, managed, unmanaged = got.get(key, (0, 0, 0))
        n = row["is_managed_count"]
        got[key] = (users + n, managed + (n if row["claim_status"] == "managed" else 0),
                    unmanaged + (n if row["claim_status"] == "unmanaged" else 0))
    check(f"{label} pyarrow tallies per partition", got, expected)


PARTITIONING = ds.partitioning(pa.schema([("connection", pa.string()), ("snapshot_date", pa.date32())]), flavor="hive")

DUCKDB_QUERY = """
SELECT connection, CAST(snapshot_date AS VARCHAR) AS day, count(*) AS users,
       count(*) FILTER (WHERE claim_status = 'managed') AS managed,
       count(*) FILTER (WHERE claim_status = 'unmanaged') AS unmanaged,
       any_value(typeof(snapshot_date)) AS date_type,
       any_value(typeof(added_to_org)) AS added_type,
       any_value(typeof(platform_roles)) AS roles_type
FROM read_parquet('{glob}', hive_partitioning = true)
GROUP BY ALL ORDER BY ALL
"""


def check_duckdb_rows(label, rows, expected):
    got = {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows}
    check(f"{label} duckdb tallies per partition", got, expected)
    check(f"{label} duckdb types", sorted({(r[5], r[6], r[7]) for r in rows}),
          [("DATE", "TIMESTAMP WITH TIME ZONE", "VARCHAR[]")])


def check_polars(label, frame, expected):
    schema = frame.collect_schema()
    check(f"{label} polars snapshot_date type", schema["snapshot_date"], pl.Date)
    check(f"{label} polars added_to_org type", schema["added_to_org"], pl.Datetime("us", "UTC"))
    check(f"{label} polars platform_roles type", schema["platform_roles"], pl.List(pl.String))
    counts = (
        frame.group_by(["connection", "snapshot_date"])
        .agg(pl.len().alias("users"),
             (pl.col("claim_status") == "managed").sum().alias("managed"),
             (pl.col("claim_status") == "unmanaged").sum().alias("unmanaged"))
        .collect()
    )
    got = {(r["connection"], r["snapshot_date"].isoformat()): (r["users"], r["managed"], r["unmanaged"])
           for r in counts.iter_rows(named=True)}
    check(f"{label} polars tallies per partition", got, expected)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--idsnap", required=True)
    parser.add_argument("--duckdb-httpfs-python", required=True)
    args = parser.parse_args()
    idsnap = os.path.abspath(args.idsnap)
    endpoint = os.environ["IDSNAP_TEST_S3_ENDPOINT"]
    bucket = os.environ["IDSNAP_TEST_S3_BUCKET"]
    prefix = f"readers-{time.time_ns():x}"
    env = dict(os.environ, TOKEN_A="token-a", TOKEN_B="token-b", AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing")

    work = tempfile.mkdtemp(prefix="idsnap-readers-")
    local = os.path.join(work, "snapshots")
    expected_local, expected_s3 = {}, {}
    for day, (users_a, users_b) in zip(DATES, [(1500, 900), (1620, 870)]):
        sim_a, base_a = start_simulator(idsnap, "org-a", "token-a", users_a, 1)
        sim_b, base_b = start_simulator(idsnap, "org-b", "token-b", users_b, 2)
        try:
            bases = {"Alpha Org": ("org-a", "TOKEN_A", base_a, True), "Beta Org": ("org-b", "TOKEN_B", base_b, False)}
            local_cfg = os.path.join(work, "local.toml")
            with open(local_cfg, "w") as f:
                f.write(config_text(f'[storage]\nurl = "file://{local}"', bases))
            s3_cfg = os.path.join(work, "s3.toml")
            with open(s3_cfg, "w") as f:
                f.write(config_text(
                    f'[storage]\nurl = "s3://{bucket}/{prefix}"\n[storage.options]\n'
                    f'aws_endpoint = "{endpoint}"\naws_allow_http = "true"\naws_region = "us-east-1"', bases))
            expected_local.update(run(idsnap, local_cfg, day, env))
            expected_s3.update(run(idsnap, s3_cfg, day, env))
        finally:
            for proc in (sim_a, sim_b):
                proc.terminate()
                proc.wait()
    check("runs printed 4 summaries (local)", len(expected_local), 4)
    check("local and S3 runs agree", expected_s3, expected_local)

    # Local files.
    root = os.path.join(local, "atlassian_users")
    check_pyarrow_dataset("local", ds.dataset(root, format="parquet", partitioning=PARTITIONING), expected_local)
    check_duckdb_rows("local", duckdb.sql(DUCKDB_QUERY.format(glob=f"{root}/**/*.parquet")).fetchall(), expected_local)
    check_polars("local", pl.scan_parquet(f"{root}/**/*.parquet", hive_partitioning=True), expected_local)

    # S3.
    host = endpoint.removeprefix("http://")
    fs = pafs.S3FileSystem(endpoint_override=host, scheme="http", access_key="testing", secret_key="testing", region="us-east-1")
    check_pyarrow_dataset("s3", ds.dataset(f"{bucket}/{prefix}/atlassian_users", filesystem=fs, format="parquet", partitioning=PARTITIONING), expected_s3)
    storage_options = {"aws_endpoint_url": endpoint, "aws_allow_http": "true", "aws_access_key_id": "testing",
                       "aws_secret_access_key": "testing", "aws_region": "us-east-1"}
    check_polars("s3", pl.scan_parquet(f"s3://{bucket}/{prefix}/atlassian_users/**/*.parquet", hive_partitioning=True,
                                       storage_options=storage_options), expected_s3)
    duck_s3 = f"""
import json, os, sysconfig, duckdb
con = duckdb.connect()
ext_dir = os.path.join(sysconfig.get_paths()["purelib"], "duckdb_ext", "extensions")
con.execute(f"SET extension_directory = '{{ext_dir}}'")
con.execute("LOAD httpfs")
con.execute("CREATE SECRET (TYPE s3, PROVIDER config, KEY_ID 'testing', SECRET 'testing', REGION 'us-east-1', ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false)")
rows = con.execute({json.dumps(DUCKDB_QUERY.format(glob=f"s3://{bucket}/{prefix}/atlassian_users/**/*.parquet"))}).fetchall()
print(json.dumps(rows))
"""
    out = subprocess.run([args.duckdb_httpfs_python, "-c", duck_s3], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        failures.append(f"duckdb on S3 failed: {out.stderr.strip()[-2000:]}")
        print(failures[-1], file=sys.stderr)
    else:
        check_duckdb_rows("s3", [tuple(r) for r in json.loads(out.stdout)], expected_s3)

    print(f"readers: {passed} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
