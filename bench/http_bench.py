#!/usr/bin/env python3
"""HTTP benchmarks of a real `keystone serve --role web` (standard library only).

Seeds a realistic data set straight into a fresh database (SQLite by default, PostgreSQL with
--postgres URL), starts the web role, and measures requests/s and latency percentiles with a
fixed number of concurrent keep-alive-free client threads, each request on a new connection
(what the frontend behind nginx does).

  bench/http_bench.py --binary target/release/keystone lists
      100-record pages of /users/users/, /users/teams/, /users/memberships/ (and the other
      families once they exist), as staff.
  bench/http_bench.py --binary target/release/keystone request-log
      /version/ with request logging on and off, at 1 and 32 connections.

Numbers depend on the machine; run on an otherwise idle one and compare like with like.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PASSWORD = "Bench-Pass-123"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Site:
    def __init__(self, binary, postgres=None, extra_env=None):
        self.binary = os.path.abspath(binary)
        self.dir = tempfile.mkdtemp(prefix="keystone-bench-")
        open(os.path.join(self.dir, "keystone.toml"), "w").close()
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": self.dir,
            "KEYSTONE_CONFIG": os.path.join(self.dir, "keystone.toml"),
            "KEYSTONE_SERVER__STATE_DIR": os.path.join(self.dir, "state"),
            "KEYSTONE_THROTTLE__ANON": "100000000/s",
            "KEYSTONE_THROTTLE__USER": "100000000/s",
            "KEYSTONE_LOGGING__LEVEL": "error",
        }
        self.postgres = postgres
        if postgres:
            self.dbname = "keystone_bench_%d" % random.randint(0, 10**9)
            subprocess.run(["psql", postgres, "-qc", "CREATE DATABASE %s" % self.dbname], check=True)
            user_host = postgres.split("://", 1)[1].split("/", 1)[0]
            user, host = user_host.split("@") if "@" in user_host else ("postgres", user_host)
            host, _, port = host.partition(":")
            self.env.update({
                "KEYSTONE_DATABASE__ENGINE": "postgres",
                "KEYSTONE_DATABASE__NAME": self.dbname,
                "KEYSTONE_DATABASE__HOST": host,
                "KEYSTONE_DATABASE__PORT": port or "5432",
                "KEYSTONE_DATABASE__USER": user.split(":")[0],
                "KEYSTONE_SECURITY__SECRET_KEY": "bench-secret-key-0123456789abcdefghijklmnop",
            })
        self.env.update(extra_env or {})
        self.proc = None

    def run(self, *args, stdin=None):
        return subprocess.run([self.binary, *args], env=self.env, cwd=self.dir, input=stdin,
                              capture_output=True, text=True, check=True).stdout

    def sql(self, statements):
        if self.postgres:
            base = self.postgres.rsplit("/", 1)[0]
            subprocess.run(["psql", "%s/%s" % (base, self.dbname), "-q", "-v", "ON_ERROR_STOP=1"],
                           input=statements, text=True, check=True, capture_output=True)
        else:
            con = sqlite3.connect(os.path.join(self.dir, "state", "keystone.db"))
            con.executescript(statements)
            con.close()

    def start(self, env=None):
        self.port = free_port()
        e = dict(self.env, KEYSTONE_SERVER__BIND="127.0.0.1:%d" % self.port, **(env or {}))
        self.proc = subprocess.Popen([self.binary, "serve", "--role", "web"], env=e, cwd=self.dir,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("keystone did not start")

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None

    def close(self):
        self.stop()
        if self.postgres:
            subprocess.run(["psql", self.postgres, "-qc", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % self.dbname])
        shutil.rmtree(self.dir, ignore_errors=True)


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())


def seed(site, n_users, n_teams, seed_value):
    """Users, teams with 3-5 members each, and one audit entry per record."""
    rnd = random.Random(seed_value)
    ts = now()
    rows = []
    true = "TRUE" if site.postgres else "1"
    false = "FALSE" if site.postgres else "0"
    for i in range(n_users):
        rows.append("INSERT INTO users_user (username, password, first_name, last_name, email, is_active, is_staff, is_superuser, is_ldap_user, date_joined) "
                    "VALUES ('user%d', '!', 'First%d', 'Last%d', 'user%d@example.org', %s, %s, %s, %s, '%s');"
                    % (i, i, i, i, true, false, false, false, ts))
    for t in range(n_teams):
        rows.append("INSERT INTO users_team (name, slug, is_active) VALUES ('Team %d', 'team-%d', %s);" % (t, t, true))
    site.sql("\n".join(rows))
    rows = []
    # ids: the staff account is 1, seeded users 2..n+1, teams 1..n_teams
    for t in range(1, n_teams + 1):
        members = rnd.sample(range(2, n_users + 2), rnd.randint(3, 5))
        for k, u in enumerate(members):
            role = "OW" if k == 0 else rnd.choice(["AD", "MB", "MB"])
            rows.append("INSERT INTO users_membership (role, user_id, team_id) VALUES ('%s', %d, %d);" % (role, u, t))
    for c in range(1, 5):
        rows.append("INSERT INTO allocations_cluster (name, description, enabled, access_mode) VALUES ('cluster%d', 'Cluster %d', %s, 'OP');" % (c, c, true))
    request_id = 0
    for t in range(1, n_teams + 1):
        for _ in range(5):
            request_id += 1
            status = rnd.choice(["PD", "AP", "AP", "DC", "CR"])
            rows.append("INSERT INTO allocations_allocationrequest (title, description, submitted, active, expire, status, submitter_id, team_id) "
                        "VALUES ('Request %d of team %d', 'A realistic description of the computing work planned.', '%s', '2026-01-01', '2027-01-01', '%s', %d, %d);"
                        % (request_id, t, ts, status, rnd.randint(2, n_users + 1), t))
            for c in rnd.sample(range(1, 5), rnd.randint(1, 3)):
                rows.append("INSERT INTO allocations_resourceallocation (requested, awarded, final, cluster_id, request_id) VALUES (%d, %d, NULL, %d, %d);"
                            % (rnd.randint(1000, 100000), rnd.randint(0, 50000), c, request_id))
    for uid in range(2, n_users + 2):
        rows.append("INSERT INTO auditlog_logentry (content_type, object_pk, object_id, object_repr, action, changes, changes_text, timestamp) "
                    "VALUES ('users | User', '%d', %d, 'User #%d', 0, '{\"username\": [\"None\", \"user%d\"]}', '', '%s');" % (uid, uid, uid, uid, ts))
    site.sql("\n".join(rows))


def load(port, path, headers, connections, requests_per_connection):
    latencies = []
    errors = []
    lock = threading.Lock()

    def worker():
        mine = []
        for _ in range(requests_per_connection):
            t0 = time.perf_counter()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c.request("GET", path, headers=headers)
            r = c.getresponse()
            r.read()
            c.close()
            mine.append(time.perf_counter() - t0)
            if r.status != 200:
                errors.append(r.status)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(p(0.50), 2),
        "p99_ms": round(p(0.99), 2),
        "errors": len(errors),
    }


def staff_token(site):
    site.run("user", "create", "--username", "staff", "--superuser", "--no-input", "--password-stdin",
             stdin=PASSWORD + "\n")
    return site.run("token", "create", "staff").strip()


def bench_lists(args):
    site = Site(args.binary, args.postgres)
    try:
        site.run("migrate")
        token = staff_token(site)
        seed(site, args.users, args.teams, args.seed)
        site.start()
        headers = {"Authorization": "Token " + token}
        results = {}
        for path in ["/users/users/?_limit=100", "/users/teams/?_limit=100", "/users/memberships/?_limit=100",
                     "/allocations/requests/?_limit=100", "/allocations/allocations/?_limit=100"]:
            probe = http.client.HTTPConnection("127.0.0.1", site.port)
            probe.request("GET", path, headers=headers)
            resp = probe.getresponse()
            body = resp.read()
            if resp.status != 200:
                continue
            count = len(json.loads(body).get("results", []))
            r = load(site.port, path, headers, args.connections, args.requests)
            r["records_per_page"] = count
            results[path] = r
        print(json.dumps({"backend": "postgres" if args.postgres else "sqlite",
                          "users": args.users, "teams": args.teams,
                          "connections": args.connections, "results": results}, indent=2))
    finally:
        site.close()


def bench_request_log(args):
    out = {}
    for logging_on in (True, False):
        site = Site(args.binary, args.postgres, {"KEYSTONE_LOGGING__REQUESTS": "true" if logging_on else "false"})
        try:
            site.run("migrate")
            site.start()
            for conns in (1, 32):
                total = max(args.requests * args.connections, 2000)
                per = max(total // conns, 1)
                load(site.port, "/version/", {}, conns, min(per, 50))  # warm-up
                out["%s, %d connection(s)" % ("logging on" if logging_on else "logging off", conns)] = \
                    load(site.port, "/version/", {}, conns, per)
        finally:
            site.close()
    print(json.dumps({"backend": "postgres" if args.postgres else "sqlite", "results": out}, indent=2))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=["lists", "request-log"])
    ap.add_argument("--binary", default="target/release/keystone")
    ap.add_argument("--postgres", help="admin URL, e.g. postgres://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--teams", type=int, default=400)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--requests", type=int, default=100, help="per connection")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        sys.exit("no binary at %s (cargo build --release)" % args.binary)
    (bench_lists if args.scenario == "lists" else bench_request_log)(args)


if __name__ == "__main__":
    main()
