#!/usr/bin/env python3
"""Fault harness: a real Keystone deployment on this machine, loaded, broken, and checked.

    tests/faults/harness.py [--binary PATH] [--scenario NAME]... [--short] [--seconds N]
                            [--runs N] [--json FILE]

Starts PostgreSQL (a fresh database on the local cluster), a private Redis, and every role
as its own `keystone serve --role ...` process: 2 web (two ports; the load client spreads
requests over them and, like a load balancer, tries the other one when a port refuses the
connection), 2 workers and 2 beats (`--short`: one of each, as CI runs it). While a steady
mix of reads and writes (comments on a request, each with a unique text) and a stream of
enqueued Slurm limit runs (`keystone task run`, against a fake `sacctmgr` that takes a
second) go on, it injects one fault per scenario, then checks from the database that:

  * every write answered 2xx is stored exactly once, and none answered 5xx (or not at all)
    is stored: a client that is told to try again must not make a double;
  * no request is answered 500 (a database outage is a 503);
  * every task whose enqueue was acknowledged ends with a terminal result row (SUCCESS or
    FAILURE), none stays PENDING, STARTED or RETRY. In restart-redis, tasks still waiting
    in Redis when it lost its data (no persistence) are recorded FAILURE by the workers'
    sweep after two visibility timeouts; any still open at the end are counted apart
    (tasks_lost_with_redis_data), not hidden;
  * every beat tick (an entry every 5 s; read from the beats' logs) was enqueued exactly
    once and run: none missed, none doubled. Ticks that fall inside a broker outage are
    coalesced into the latest one, as upstream's beat does (no back-fill); they are counted
    apart, not as missed.

Scenarios (all by default; `--short`: kill-worker and restart-redis):
  kill-worker     kill -9 of a worker while it runs a task: another worker (with --short,
                  the killed one once started again 5 s later, as systemd would) reclaims it
  kill-beat       kill -9 of the beat that holds the leader lease: the other takes over
                  (the killed one is started again 5 s later)
  restart-redis   Redis killed and started empty (no persistence)
  restart-web     SIGTERM of one web process under load, then started again
  restart-postgres  `pg_ctlcluster <version> main restart` of the local cluster (affects
                  every database on it; not in --short)

Needs psql, redis-server, redis-cli and pg_ctlcluster (for restart-postgres). Environment:
KEYSTONE_FAULTS_POSTGRES (default postgres://postgres@127.0.0.1:5432/postgres).
Exit status 0 when every scenario lost and doubled nothing, 1 otherwise.
"""

import argparse
import datetime
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

TICK_EVERY = 5  # seconds between beat ticks of the schedule the harness watches
TICK_TASK = "apps.logging.tasks.clear_log_records"
CLUSTER_TASK = "apps.allocations.tasks.limits.update_limits_for_cluster"
TERMINAL = ("SUCCESS", "FAILURE")
REDIS_DOWN = int(os.environ.get("KEYSTONE_FAULTS_REDIS_DOWN", "8"))  # seconds
ALL_SCENARIOS = ["kill-worker", "kill-beat", "restart-redis", "restart-web", "restart-postgres"]
SHORT_SCENARIOS = ["kill-worker", "restart-redis"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(*args):
    print("faults:", *args, file=sys.stderr, flush=True)


class Redis:
    """A private redis-server without persistence, on a port of its own."""

    def __init__(self, workdir):
        self.port = free_port()
        self.workdir = workdir
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
             "--save", "", "--appendonly", "no", "--dir", self.workdir],
            stdout=subprocess.DEVNULL)
        for _ in range(100):
            if self.cli("PING") == "PONG":
                return
            time.sleep(0.05)
        raise SystemExit("faults: redis-server did not start")

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def cli(self, *args):
        out = subprocess.run(["redis-cli", "-p", str(self.port), *args],
                             capture_output=True, text=True)
        return out.stdout.strip()

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"


class Deployment:
    """One site: database, Redis, configuration, and the role processes."""

    def __init__(self, binary, pg_url, short):
        self.binary = binary
        self.short = short
        self.dir = tempfile.mkdtemp(prefix="keystone-faults.")
        self.redis = Redis(self.dir)
        self.pg_url = pg_url
        self.db = f"keystone_faults_{os.getpid()}_{random.randrange(1 << 30)}"
        self.procs = {}  # name -> Popen
        self.reclaim_s = None  # kill-worker: seconds until its task was finished elsewhere
        parsed = urllib.parse.urlparse(pg_url)
        self.prefix = "faults" + uuid.uuid4().hex[:8]
        open(os.path.join(self.dir, "keystone.toml"), "w").close()
        self.sacctmgr_log = os.path.join(self.dir, "sacctmgr.log")
        sacctmgr = os.path.join(self.dir, "sacctmgr")
        with open(sacctmgr, "w") as f:
            f.write(f"#!/bin/sh\necho \"$$ $*\" >> '{self.sacctmgr_log}'\nsleep 1\nexit 0\n")
        os.chmod(sacctmgr, 0o755)
        self.env = dict(
            os.environ,
            KEYSTONE_CONFIG=os.path.join(self.dir, "keystone.toml"),
            KEYSTONE_SERVER__STATE_DIR=os.path.join(self.dir, "state"),
            KEYSTONE_DATABASE__ENGINE="postgres",
            KEYSTONE_DATABASE__NAME=self.db,
            KEYSTONE_DATABASE__HOST=parsed.hostname or "127.0.0.1",
            KEYSTONE_DATABASE__PORT=str(parsed.port or 5432),
            KEYSTONE_DATABASE__USER=parsed.username or "postgres",
            KEYSTONE_REDIS__URL=self.redis.url,
            KEYSTONE_REDIS__PREFIX=self.prefix,
            KEYSTONE_SECURITY__SECRET_KEY="faults-secret-key-0123456789abcdefghijklmnopqrstuvwxyz",
            KEYSTONE_THROTTLE__ANON="100000000/min",
            KEYSTONE_THROTTLE__USER="100000000/min",
            KEYSTONE_LOGGING__LEVEL="INFO",
            KEYSTONE_METRICS__ENABLED="false",
            KEYSTONE_SLURM__SACCTMGR=sacctmgr,
            KEYSTONE_WORKER__VISIBILITY_TIMEOUT="6",
            KEYSTONE_WORKER__CONCURRENCY="2",
            KEYSTONE_BEAT__LEASE="3",
            KEYSTONE_SCHEDULE__LDAP_SYNC="",
            KEYSTONE_SCHEDULE__UPDATE_LIMITS="",
            KEYSTONE_SCHEDULE__UPCOMING_EXPIRATIONS="",
            KEYSTONE_SCHEDULE__PAST_EXPIRATIONS="",
            KEYSTONE_SCHEDULE__LOG_CLEANUP=f"*/{TICK_EVERY} * * * * *",
        )
        self.psql_admin("-qc", f"CREATE DATABASE {self.db}")
        self.keystone("migrate")
        self.keystone("seed", "--seed", "7", "--n-staff", "2", "--n-teams", "2")
        subprocess.run([binary, "user", "create", "--username", "faults", "--staff",
                        "--no-input", "--password-stdin"], input="Faults-Pass-123\n",
                       env=self.env, check=True, capture_output=True, text=True)
        self.token = self.keystone("token", "create", "faults").strip()
        self.sql("INSERT INTO allocations_cluster (name, enabled, access_mode) "
                 "VALUES ('faulty', TRUE, 'OP')")
        self.request_id = int(self.sql("SELECT MIN(id) FROM allocations_allocationrequest"))
        n = 1 if short else 2
        self.web_ports = [free_port() for _ in range(n)]
        for i, port in enumerate(self.web_ports):
            self.start(f"web{i + 1}", "web", port)
        for i in range(n):
            self.start(f"worker{i + 1}", "worker")
            self.start(f"beat{i + 1}", "beat")
        for port in self.web_ports:
            self.wait_http(port)

    def keystone(self, *args):
        out = subprocess.run([self.binary, *args], env=self.env, capture_output=True,
                             text=True)
        if out.returncode != 0:
            raise SystemExit(f"faults: keystone {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def psql_admin(self, *args):
        subprocess.run(["psql", self.pg_url, *args], check=True, capture_output=True)

    def db_url(self):
        parsed = urllib.parse.urlparse(self.pg_url)
        return parsed._replace(path="/" + self.db).geturl()

    def sql(self, query):
        for attempt in range(30):
            out = subprocess.run(["psql", self.db_url(), "-Atc", query], capture_output=True,
                                 text=True)
            if out.returncode == 0:
                return out.stdout.strip()
            time.sleep(1)  # the database may be restarting
        raise SystemExit(f"faults: {query}: {out.stderr}")

    def start(self, name, role, port=None):
        env = dict(self.env)
        if port:
            env["KEYSTONE_SERVER__BIND"] = f"127.0.0.1:{port}"
        logf = open(os.path.join(self.dir, f"{name}.log"), "ab")
        self.procs[name] = subprocess.Popen([self.binary, "serve", "--role", role], env=env,
                                            stdout=logf, stderr=subprocess.STDOUT)

    def restart_later(self, name, role, after=5):
        """Starts a killed role again, as systemd's Restart=on-failure (RestartSec=5s) does."""
        def later():
            time.sleep(after)
            self.start(name, role)
        threading.Thread(target=later, daemon=True).start()

    def wait_http(self, port, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/version/")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"faults: the web role on port {port} did not answer")

    def leader_pid(self):
        token = self.redis.cli("GET", f"{self.prefix}:beat:leader")
        for name, p in self.procs.items():
            if name.startswith("beat") and f":{p.pid}#" in token:
                return name
        return None

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
        self.redis.kill()
        subprocess.run(["psql", self.pg_url, "-qc",
                        f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class Load:
    """Reads and writes over the web ports, and a stream of enqueued tasks."""

    def __init__(self, dep, scenario, threads=6):
        self.dep = dep
        self.scenario = scenario
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.writes = {}  # marker -> status (int) or None (no answer)
        self.statuses = {}  # "2xx" ... -> count
        self.slowest = 0.0
        self.tasks = []  # acknowledged task ids
        self.enqueued_at = {}  # task id -> when its enqueue was acknowledged
        self.enqueue_failed = 0
        self.workers = [threading.Thread(target=self.http_loop, args=(i,), daemon=True)
                        for i in range(threads)]
        self.workers.append(threading.Thread(target=self.task_loop, daemon=True))

    def start(self):
        for t in self.workers:
            t.start()

    def finish(self):
        self.stop_flag.set()
        for t in self.workers:
            t.join(timeout=60)

    def count(self, status, elapsed):
        # Server errors by their exact code: a database outage must give 503, never 500.
        key = (str(status) if status >= 500 else f"{status // 100}xx") if status else "no answer"
        with self.lock:
            self.statuses[key] = self.statuses.get(key, 0) + 1
            self.slowest = max(self.slowest, elapsed)

    def request(self, method, path, body=None):
        """One request, on a random port first, then the others (a load balancer's retry of
        a refused connection); (status or None, seconds)."""
        ports = list(self.dep.web_ports)
        random.shuffle(ports)
        started = time.time()
        headers = {"Authorization": f"Token {self.dep.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        for port in ports:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                c.request(method, path, body=body, headers=headers)
                r = c.getresponse()
                r.read()
                c.close()
                return r.status, time.time() - started
            except ConnectionRefusedError:
                continue  # not listening: another process serves it
            except OSError:
                return None, time.time() - started  # sent, but no answer
        return None, time.time() - started

    def http_loop(self, n):
        i = 0
        while not self.stop_flag.is_set():
            i += 1
            if i % 2:
                marker = f"fault {self.scenario} {n}-{i} {uuid.uuid4().hex[:8]}"
                body = json.dumps({"content": marker, "request": self.dep.request_id,
                                   "private": False})
                status, elapsed = self.request("POST", "/allocations/comments/", body)
                with self.lock:
                    self.writes[marker] = status
            else:
                status, elapsed = self.request("GET", "/allocations/requests/?_limit=10")
            self.count(status, elapsed)
            time.sleep(0.01)

    def task_loop(self):
        while not self.stop_flag.is_set():
            out = subprocess.run([self.dep.binary, "task", "run", "update-limits-cluster",
                                  "faulty"], env=self.dep.env, capture_output=True, text=True,
                                 timeout=60)
            if out.returncode == 0 and out.stdout.strip():
                with self.lock:
                    self.tasks.append(out.stdout.split()[0])
                    self.enqueued_at[out.stdout.split()[0]] = time.time()
            else:
                with self.lock:
                    self.enqueue_failed += 1  # reported to the producer, not dropped
            time.sleep(0.5)


def inject(dep, scenario):
    """Injects the fault; returns a note of what was done."""
    if scenario == "kill-worker":
        # The worker that is running a task (the fake sacctmgr takes a second).
        for _ in range(50):
            busy = dep.sql("SELECT worker FROM django_celery_results_taskresult "
                           "WHERE status = 'STARTED' LIMIT 1")
            name = next((n for n, p in dep.procs.items()
                         if n.startswith("worker") and busy.endswith(f":{p.pid}")), None)
            if name:
                break
            time.sleep(0.1)
        name = name or "worker1"
        task = dep.sql("SELECT task_id FROM django_celery_results_taskresult WHERE status = "
                       f"'STARTED' AND worker LIKE '%:{dep.procs[name].pid}' LIMIT 1")
        dep.procs[name].send_signal(signal.SIGKILL)
        dep.procs[name].wait()
        killed_at = time.time()
        dep.restart_later(name, "worker")

        def reclaimed():
            # How long until another worker finished the task the killed one was running.
            while task and time.time() - killed_at < 120:
                if dep.sql("SELECT status FROM django_celery_results_taskresult "
                           f"WHERE task_id = '{task}'") in TERMINAL:
                    dep.reclaim_s = round(time.time() - killed_at, 1)
                    return
                time.sleep(0.2)
        threading.Thread(target=reclaimed, daemon=True).start()
        return f"killed {name} while it ran task {task or '(none seen)'}, started again 5 s later"
    if scenario == "kill-beat":
        name = dep.leader_pid() or "beat1"
        dep.procs[name].send_signal(signal.SIGKILL)
        dep.procs[name].wait()
        dep.restart_later(name, "beat")
        return f"killed {name} (the lease holder), started again 5 s later"
    if scenario == "restart-redis":
        dep.redis.kill()
        time.sleep(REDIS_DOWN)
        dep.redis.start()
        return f"Redis killed, down {REDIS_DOWN} s, started empty"
    if scenario == "restart-web":
        name = "web1"
        port = dep.web_ports[0]
        dep.procs[name].send_signal(signal.SIGTERM)
        dep.procs[name].wait(timeout=40)
        dep.start(name, "web", port)
        dep.wait_http(port)
        return "SIGTERM of web1 under load, then started again"
    if scenario == "restart-postgres":
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main",
                        "restart"], check=True)
        return f"pg_ctlcluster {version} main restart"
    raise SystemExit(f"faults: unknown scenario {scenario}")


def wait_for_tasks(dep, ids, timeout, stalled=20):
    """Seconds until every acknowledged task is terminal, or None (after `timeout`, or once
    nothing has finished for `stalled` seconds)."""
    started = time.time()
    quoted = ",".join(f"'{i}'" for i in ids) or "''"
    last, progress_at = None, time.time()
    while time.time() - started < timeout and time.time() - progress_at < stalled:
        open_ = int(dep.sql("SELECT COUNT(*) FROM django_celery_results_taskresult "
                            f"WHERE task_id IN ({quoted}) AND status NOT IN ('SUCCESS', 'FAILURE')"))
        done = int(dep.sql("SELECT COUNT(*) FROM django_celery_results_taskresult "
                           f"WHERE task_id IN ({quoted})"))
        if open_ == 0 and done == len(ids):
            return time.time() - started
        if open_ != last:
            last, progress_at = open_, time.time()
        time.sleep(1)
    return None


def check(dep, load, window, scenario):
    stored = {}
    for line in dep.sql("SELECT content, COUNT(*) FROM allocations_comment "
                        "WHERE content LIKE 'fault %' GROUP BY content").splitlines():
        content, n = line.rsplit("|", 1)
        stored[content] = int(n)
    answered = {m for m, s in load.writes.items() if s and 200 <= s < 300}
    unanswered = {m for m, s in load.writes.items() if not s or s >= 500}
    lost = [m for m in answered if stored.get(m, 0) == 0]
    doubled = [m for m in load.writes if stored.get(m, 0) > 1]
    unknown_stored = sum(1 for m in unanswered if stored.get(m, 0) == 1)
    drained = wait_for_tasks(dep, load.tasks, 120)
    rows = dep.sql("SELECT status, COUNT(*) FROM django_celery_results_taskresult "
                   f"WHERE task_name = '{CLUSTER_TASK}' GROUP BY status")
    quoted = ",".join(f"'{i}'" for i in load.tasks) or "''"
    open_ids = dep.sql("SELECT task_id FROM django_celery_results_taskresult "
                       f"WHERE task_id IN ({quoted}) AND status NOT IN ('SUCCESS', 'FAILURE')"
                       ).split()
    # Redis restarted without persistence loses the tasks still waiting in it (documented:
    # run Redis with appendonly yes). Their rows stay PENDING: counted apart, not hidden.
    lost_with_redis = [i for i in open_ids if scenario == "restart-redis"
                       and load.enqueued_at.get(i, 0) < window[2]]
    task_open = len(open_ids) - len(lost_with_redis)
    task_missing = len(load.tasks) - int(dep.sql(
        f"SELECT COUNT(*) FROM django_celery_results_taskresult WHERE task_id IN ({quoted})"))
    # Beat ticks, as each beat logged them ("fired for <tick>: <task> task_id=<id>"): each
    # tick of the window enqueued once, and its task run to a terminal row. Ticks that fell
    # inside an outage of the broker are coalesced into the latest one (no back-fill, as
    # upstream's beat), so they are counted apart.
    fired = {}
    pattern = re.compile(r"fired for (\S+ \S+) UTC: \S+ task_id=([0-9a-f-]{36})")
    for name in dep.procs:
        path = os.path.join(dep.dir, f"{name}.log")
        if name.startswith("beat") and os.path.exists(path):
            with open(path, errors="replace") as f:
                for line in f:
                    m = pattern.search(re.sub(r"\x1b\[[0-9;]*m", "", line))
                    if m:
                        at = datetime.datetime.fromisoformat(m.group(1)).replace(
                            tzinfo=datetime.timezone.utc).timestamp()
                        fired.setdefault(int(at), []).append(m.group(2))
    first = (int(window[0]) // TICK_EVERY + 1) * TICK_EVERY
    expected = range(first, int(window[1]) - TICK_EVERY, TICK_EVERY)
    outage = (int(window[2]) - TICK_EVERY, int(window[3]) + TICK_EVERY)
    missed = [t for t in expected if t not in fired and not outage[0] <= t <= outage[1]]
    coalesced = [t for t in expected if t not in fired and outage[0] <= t <= outage[1]]
    ticks_doubled = [t for t, ids in fired.items() if len(ids) > 1]
    tick_ids = [i for ids in fired.values() for i in ids]
    quoted_ticks = ",".join(f"'{i}'" for i in tick_ids) or "''"
    finished = set(dep.sql(
        "SELECT task_id FROM django_celery_results_taskresult "
        f"WHERE task_id IN ({quoted_ticks}) AND status IN ('SUCCESS', 'FAILURE')").split())
    unfinished = [(t, i) for t, ids in fired.items() for i in ids if i not in finished]
    ticks_lost_with_redis = [i for t, i in unfinished
                             if scenario == "restart-redis" and t < window[2]]
    ticks_not_run = len(unfinished) - len(ticks_lost_with_redis)
    return {
        "requests": sum(load.statuses.values()),
        "statuses": dict(sorted(load.statuses.items())),
        "slowest_s": round(load.slowest, 2),
        "writes_answered_2xx": len(answered),
        "writes_lost": len(lost),
        "writes_doubled": len(doubled),
        "writes_without_answer": len(unanswered),
        "of_those_stored": unknown_stored,
        "tasks_enqueued": len(load.tasks),
        "enqueues_refused": load.enqueue_failed,
        "tasks_not_terminal": task_open,
        "tasks_lost_with_redis_data": len(lost_with_redis),
        "tasks_without_row": task_missing,
        "tasks_drained_after_s": None if drained is None else round(drained, 1),
        "task_rows": rows.replace("\n", ", "),
        "ticks_expected": len(expected),
        "ticks_missed": len(missed),
        "ticks_coalesced_in_outage": len(coalesced),
        "ticks_doubled": len(ticks_doubled),
        "ticks_not_run": ticks_not_run,
        "ticks_lost_with_redis_data": len(ticks_lost_with_redis),
    }


def run_scenario(binary, scenario, seconds, short, pg_url):
    dep = Deployment(binary, pg_url, short)
    try:
        load = Load(dep, scenario)
        begin = time.time()
        load.start()
        time.sleep(seconds / 3)
        fault_at = time.time()
        note = inject(dep, scenario)
        recovered = None
        # Recovery: the first quick (under 0.5 s) 200 after the fault.
        while time.time() - fault_at < seconds:
            status, elapsed = load.request("GET", "/version/")
            if status == 200 and elapsed < 0.5:
                recovered = time.time() - fault_at
                break
            time.sleep(0.1)
        recovered_at = time.time()
        time.sleep(max(0.0, seconds - (time.time() - begin)))
        load.finish()
        end = time.time()
        # Let the last ticks' tasks finish before counting.
        time.sleep(3)
        result = check(dep, load, (begin, end, fault_at, recovered_at), scenario)
        result["scenario"] = scenario
        result["fault"] = note
        result["http_fast_again_after_s"] = None if recovered is None else round(recovered, 1)
        if scenario == "kill-worker":
            result["task_reclaimed_after_s"] = dep.reclaim_s
        ok = ("500" not in result["statuses"] and result["of_those_stored"] == 0
              and result["writes_lost"] == 0 and result["writes_doubled"] == 0
              and result["tasks_not_terminal"] == 0 and result["tasks_without_row"] == 0
              and result["ticks_doubled"] == 0 and result["ticks_missed"] == 0
              and result["ticks_not_run"] == 0)
        result["ok"] = ok
        if not ok:
            keep = tempfile.mkdtemp(prefix=f"keystone-faults-{scenario}.")
            for name in dep.procs:
                src = os.path.join(dep.dir, f"{name}.log")
                if os.path.exists(src):
                    shutil.copy(src, keep)
            result["logs"] = keep
        return result
    finally:
        dep.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.environ.get("KEYSTONE_BIN", "target/release/keystone"))
    ap.add_argument("--scenario", action="append", choices=ALL_SCENARIOS)
    ap.add_argument("--short", action="store_true", help="one process per role; CI's scenarios")
    ap.add_argument("--seconds", type=int, default=30, help="load per scenario (default 30)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        ap.error(f"no keystone binary at {binary} (--binary)")
    for tool in ("psql", "redis-server", "redis-cli"):
        if not shutil.which(tool):
            ap.error(f"{tool} is not installed")
    pg_url = os.environ.get("KEYSTONE_FAULTS_POSTGRES",
                            "postgres://postgres@127.0.0.1:5432/postgres")
    scenarios = args.scenario or (SHORT_SCENARIOS if args.short else ALL_SCENARIOS)
    results = []
    for run in range(1, args.runs + 1):
        for scenario in scenarios:
            log(f"run {run}: {scenario} ({args.seconds} s of load)")
            r = run_scenario(binary, scenario, args.seconds, args.short, pg_url)
            r["run"] = run
            results.append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    failed = [r for r in results if not r["ok"]]
    log(f"{len(results) - len(failed)} of {len(results)} scenario runs lost and doubled nothing")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
