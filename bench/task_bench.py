#!/usr/bin/env python3
"""Task throughput through Redis (standard library only).

Starts real `keystone serve --role worker` processes against a fresh database (SQLite by
default, PostgreSQL with --postgres URL) and Redis (--redis, default db 15, a unique key
prefix per run), queues N no-op tasks at once (LDAP sync with LDAP unconfigured: each run
still writes its STARTED and SUCCESS rows and is acknowledged), and measures tasks/s until
every one is acknowledged. Layouts: 1 worker x 1 slot, 1 worker x 4 slots, 4 workers x 1 slot.

  bench/task_bench.py --binary target/release/keystone [--tasks 2000] [--postgres URL]

Numbers depend on the machine; run on an otherwise idle one and compare like with like.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

LDAP_SYNC = "apps.users.tasks.ldap_update_users"


class Redis:
    """Just enough RESP for XADD pipelines and XINFO."""

    def __init__(self, url):
        rest = url.split("://", 1)[1]
        hostport, _, db = rest.partition("/")
        host, _, port = hostport.rpartition("@")[2].partition(":")
        self.sock = socket.create_connection((host, int(port or 6379)))
        self.buf = b""
        if db:
            self.call("SELECT", db)

    @staticmethod
    def encode(*args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        line = self.line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(65536)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RuntimeError("unexpected reply %r" % line)

    def call(self, *args):
        self.sock.sendall(self.encode(*args))
        return self.reply()

    def pipeline(self, commands):
        self.sock.sendall(b"".join(self.encode(*c) for c in commands))
        return [self.reply() for _ in commands]

    def group(self, stream, name="workers"):
        if not self.call("EXISTS", stream):
            return None
        for g in self.call("XINFO", "GROUPS", stream) or []:
            info = dict(zip(g[::2], g[1::2]))
            if info.get("name") == name:
                return info
        return None

    def drop_prefix(self, prefix):
        keys = self.call("KEYS", prefix + ":*") or []
        if keys:
            self.call("DEL", *keys)


class Site:
    def __init__(self, binary, redis_url, postgres=None):
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="keystone-task-bench-")
        open(os.path.join(self.dir, "keystone.toml"), "w").close()
        self.prefix = "ksbench-" + uuid.uuid4().hex[:12]
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": self.dir,
            "KEYSTONE_CONFIG": os.path.join(self.dir, "keystone.toml"),
            "KEYSTONE_SERVER__STATE_DIR": os.path.join(self.dir, "state"),
            "KEYSTONE_LOGGING__LEVEL": "error",
            "KEYSTONE_METRICS__ENABLED": "false",
            "KEYSTONE_REDIS__URL": redis_url,
            "KEYSTONE_REDIS__PREFIX": self.prefix,
        }
        for entry in ("LDAP_SYNC", "LOG_CLEANUP", "UPDATE_LIMITS", "UPCOMING_EXPIRATIONS",
                      "PAST_EXPIRATIONS"):
            self.env["KEYSTONE_SCHEDULE__" + entry] = ""
        self.postgres = postgres
        if postgres:
            self.dbname = "keystone_task_bench_%d" % os.getpid()
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
            })
        subprocess.run([binary, "migrate"], env=self.env, check=True, stdout=subprocess.DEVNULL)

    def worker(self, concurrency):
        env = dict(self.env, KEYSTONE_WORKER__CONCURRENCY=str(concurrency),
                   KEYSTONE_SERVER__BIND="127.0.0.1:0")
        return subprocess.Popen([self.binary, "serve", "--role", "worker"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def close(self):
        if self.postgres:
            subprocess.run(["psql", self.postgres, "-qc",
                            "DROP DATABASE IF EXISTS %s WITH (FORCE)" % self.dbname])
        shutil.rmtree(self.dir, ignore_errors=True)


def run(args, processes, concurrency):
    site = Site(args.binary, args.redis, args.postgres)
    redis = Redis(args.redis)
    stream = site.prefix + ":tasks"
    workers = [site.worker(concurrency) for _ in range(processes)]
    try:
        deadline = time.time() + 30
        while redis.group(stream) is None or len(redis.call("XINFO", "CONSUMERS", stream, "workers")) < processes:
            if time.time() > deadline:
                raise RuntimeError("workers did not join the queue")
            time.sleep(0.05)
        messages = [("XADD", stream, "*", "task",
                     json.dumps({"id": str(uuid.uuid4()), "task": LDAP_SYNC, "args": []}))
                    for _ in range(args.tasks)]
        start = time.perf_counter()
        redis.pipeline(messages)
        while True:
            g = redis.group(stream)
            if g["entries-read"] is not None and g["entries-read"] >= args.tasks and g["pending"] == 0:
                break
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=30)
        redis.drop_prefix(site.prefix)
        site.close()
    return {"workers": processes, "slots_per_worker": concurrency, "tasks": args.tasks,
            "seconds": round(elapsed, 3), "tasks_per_second": round(args.tasks / elapsed, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/keystone")
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    ap.add_argument("--postgres", help="admin URL, e.g. postgres://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    results = [run(args, p, c) for p, c in ((1, 1), (1, 4), (4, 1))]
    print(json.dumps({"backend": "postgres" if args.postgres else "sqlite", "results": results},
                     indent=2))


if __name__ == "__main__":
    main()
