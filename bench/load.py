#!/usr/bin/env python3
"""claimgate under load, against the baselines, measured in one run on this machine.

Targets, all on loopback, all serving the same objects from one nginx ("the origin"):
  direct         wrk -> origin nginx (the upstream alone)
  nginx          wrk -> nginx proxy_pass -> origin (a reverse proxy that checks nothing:
                 keep-alive upstream pool, uploads streamed as claimgate does, responses
                 through 16 x 64 KiB buffers: the fastest nginx settings tried, README)
  claimgate      wrk -> claimgate: bearer JWT -> policy -> SigV4 re-sign -> audit -> origin
  claimgate-sts  the same with an STS session: the caller's SigV4 verified, the session
                 unsealed, then as above
  claimgate-otlp claimgate as above with trace export on (OTEL_EXPORTER_OTLP_ENDPOINT, the
                 SDK's default batching and sampler: every request's 4 spans exported) to an
                 OTLP/HTTP sink in this script that reads and discards them (1 KiB GET only)

Workloads (each target in turn, round after round, so drift hits every target alike):
  get1k   1 KiB GETs at saturation          get1m / put1m   1 MiB GETs / PUTs
  paced   1 KiB GETs at half claimgate's saturating rate (latency when not overloaded)
  stream  one 1 GiB GET and one 1 GiB PUT   idle    10,000 idle keep-alive connections

For each: req/s, p50/p99/p99.9, the target's CPU time per request (user + system from
/proc, summed over its processes: steadier than req/s on a box the load generator shares)
and its peak RSS (VmHWM, reset before each run). Then the issue's goals, met or not.

Needs nginx and wrk (Debian packages) and a claimgate binary built with the `dev` feature
(its dev IdP mints the tokens). `--quick` is the CI smoke test: short runs, small streams,
no judgement on the figures (the machine is shared); it fails only if a request fails.
"""

import argparse
import datetime
import hashlib
import hmac
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WRK_LUA = os.path.join(HERE, "wrk.lua")
OBJECT_1K = "/datasets/imagenet/0001.tar"
OBJECT_1M = "/datasets/imagenet/shard-1m.tar"
OBJECT_BIG = "/datasets/imagenet/stream.tar"
PUT_PATH = "/checkpoints/alice/bench.bin"
PUT_BIG = "/checkpoints/alice/stream.bin"
ROLE_ARN = "arn:aws:iam::000000000000:role/trainer"
MIB = 1 << 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not start listening on {port}")


# ---- per-process CPU and memory from /proc -------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK_TCK


def context_switches(pids):
    """(all, involuntary) context switches of every live thread of `pids`: each one is a
    thread that slept and was woken, or was preempted — the cost a hand-off between threads
    or processes has."""
    total = preempted = 0
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/status") as f:
                    for line in f:
                        if "ctxt_switches" in line:
                            total += int(line.split()[1])
                            if line.startswith("nonvoluntary"):
                                preempted += int(line.split()[1])
            except OSError:
                pass
    return total, preempted


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def reset_peak(pids):
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pass


def peak_mib(pids):
    return sum(status_kib(pid, "VmHWM") for pid in pids) / 1024


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


# ---- the processes under test ----------------------------------------------------------


class Nginx:
    """One nginx master with its own config; `pids` are its workers (the master idles)."""

    def __init__(self, work, name, server_block):
        self.dir = os.path.join(work, name)
        for d in ("", "tmp"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        os.chmod(os.path.join(self.dir, "tmp"), 0o777)
        conf = os.path.join(self.dir, "nginx.conf")
        tmp = os.path.join(self.dir, "tmp")
        with open(conf, "w") as f:
            f.write(f"""worker_processes 2;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  client_max_body_size 0;
  {server_block}
}}
""")
        subprocess.run(["nginx", "-c", conf], check=True)
        for _ in range(100):
            if os.path.exists(f"{self.dir}/nginx.pid"):
                break
            time.sleep(0.05)
        with open(f"{self.dir}/nginx.pid") as f:
            self.master = int(f.read())
        for _ in range(100):
            self.pids = children(self.master)
            if len(self.pids) >= 2:
                break
            time.sleep(0.05)

    def stop(self):
        try:
            os.kill(self.master, signal.SIGQUIT)
        except ProcessLookupError:
            pass


def sigv4_headers(host, method, path, access_key, secret, token, region="us-east-1"):
    """A SigV4-signed request's headers (S3 style, unsigned payload), as an SDK sends them.
    The same signed headers are replayed by every request of a run: well inside the
    15-minute window in which S3, and claimgate, accept a signature."""
    amz_date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    headers = {
        "host": host,
        "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
        "x-amz-date": amz_date,
        "x-amz-security-token": token,
    }
    names = sorted(headers)
    signed = ";".join(names)
    canonical = "\n".join(
        [method, path, "", "".join(f"{n}:{headers[n]}\n" for n in names), signed, "UNSIGNED-PAYLOAD"]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    del headers["host"]  # wrk and urllib send it from the URL
    return headers


def assume_role(base, token):
    form = urllib.parse.urlencode(
        {
            "Action": "AssumeRoleWithWebIdentity",
            "Version": "2011-06-15",
            "RoleArn": ROLE_ARN,
            "RoleSessionName": "bench",
            "WebIdentityToken": token,
        }
    ).encode()
    with urllib.request.urlopen(urllib.request.Request(base + "/", data=form), timeout=10) as r:
        xml = r.read().decode()
    get = lambda tag: re.search(f"<{tag}>([^<]*)</{tag}>", xml).group(1)  # noqa: E731
    return get("AccessKeyId"), get("SecretAccessKey"), get("SessionToken")


def check(url, headers, method="GET", data=None):
    req = urllib.request.Request(url, headers=headers, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {url} answered {e.code}: {e.read()[:300]!r}")


class OtlpSink:
    """Takes OTLP/HTTP exports and discards them, counting posts and bytes: the collector's
    cost is not claimgate's, but the export must really happen."""

    def __init__(self):
        import http.server
        import threading

        sink = self
        self.posts = 0
        self.bytes = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("content-length", 0))
                self.rfile.read(n)
                sink.posts += 1
                sink.bytes += n
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Setup:
    def __init__(self, args):
        self.args = args
        # RAM-backed when there is room (no disk in the measurement): the streamed objects
        # twice over, plus the audit log between trims.
        base = None
        if os.access("/dev/shm", os.W_OK):
            st = os.statvfs("/dev/shm")
            if st.f_bavail * st.f_frsize > (2 * args.stream_mib + 512) * MIB:
                base = "/dev/shm"
        self.work = tempfile.mkdtemp(prefix="claimgate-bench-", dir=base)
        os.chmod(self.work, 0o755)  # nginx workers run unprivileged when started as root
        self.procs = []
        self.nginxes = []
        self.workload = ""

    def start(self):
        a = self.args
        www = os.path.join(self.work, "www")
        os.makedirs(www + "/datasets/imagenet")
        os.makedirs(www + "/checkpoints/alice")
        with open(www + OBJECT_1K, "wb") as f:
            f.write(os.urandom(1024))
        with open(www + OBJECT_1M, "wb") as f:
            f.write(os.urandom(MIB))
        self.big = www + OBJECT_BIG
        with open(self.big, "wb") as f:
            f.truncate(a.stream_mib * MIB)  # sparse: no disk, the bytes still cross every hop
        for d, _, files in os.walk(www):
            os.chmod(d, 0o777)
            for name in files:
                os.chmod(os.path.join(d, name), 0o644)
        self.upload = os.path.join(self.work, "upload.bin")
        with open(self.upload, "wb") as f:
            f.truncate(a.stream_mib * MIB)

        self.origin_port, self.nginx_port, self.cg_port = free_port(), free_port(), free_port()
        origin = Nginx(
            self.work,
            "origin",
            f"server {{ listen 127.0.0.1:{self.origin_port} reuseport; root {www};"
            " dav_methods PUT; create_full_put_path on; }",
        )
        self.nginxes.append(origin)
        proxy = Nginx(
            self.work,
            "proxy",
            f"upstream origin {{ server 127.0.0.1:{self.origin_port}; keepalive 256; }}\n"
            f"  server {{ listen 127.0.0.1:{self.nginx_port} reuseport; location / {{ proxy_pass http://origin;"
            ' proxy_http_version 1.1; proxy_set_header Connection "";'
            " proxy_request_buffering off; proxy_buffering on;"
            " proxy_buffers 16 64k; proxy_busy_buffers_size 128k; } }",
        )
        self.nginxes.append(proxy)

        # The dev IdP and its tokens, from `claimgate dev`; its own proxy is not measured.
        dev_dir = os.path.join(self.work, "dev")
        dev_out = open(os.path.join(self.work, "dev.out"), "w+")
        dev = subprocess.Popen(
            [a.bin, "dev", "--port", "0", "--dir", dev_dir], stdout=dev_out, stderr=subprocess.DEVNULL
        )
        self.procs.append(dev)
        for _ in range(200):
            dev_out.seek(0)
            if "ready" in dev_out.read():
                break
            time.sleep(0.05)
        else:
            sys.exit("claimgate dev did not start")
        issuer = open(os.path.join(dev_dir, "issuer")).read().strip()
        self.token = open(os.path.join(dev_dir, "tokens", "alice.jwt")).read().strip()
        with open(os.path.join(self.work, "sealing.key"), "w") as f:
            f.write("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")
        config = os.path.join(self.work, "claimgate.toml")
        with open(config, "w") as f:
            f.write(f"""[server]
listen = "127.0.0.1:{self.cg_port}"
{f"workers = {a.workers}" if a.workers else ""}
[[issuers]]
issuer = "{issuer}"
audiences = ["claimgate"]
[sts]
enabled = true
sealing_keys = ["file:{self.work}/sealing.key"]
[policies]
dir = "{dev_dir}/policies"
[audit]
path = "{self.work}/audit.log"
[limits]
max_connections = {a.idle + 1000}
[[routes]]
name = "lake"
kind = "s3"
upstream = "http://127.0.0.1:{self.origin_port}"
region = "us-east-1"
credentials = {{ kind = "static", access_key_id = "AKIDBENCH", secret_access_key = "bench-secret" }}
[[routes]]
name = "features"
kind = "http"
path_prefix = "/features/"
upstream = "http://127.0.0.1:{self.origin_port}"
credentials = {{ kind = "bearer", token = "unused" }}
""")
        env = dict(os.environ, CLAIMGATE_LOG="warn")
        for k in [k for k in env if k.startswith("OTEL_")]:
            del env[k]
        cg = subprocess.Popen([a.bin, "serve", "--config", config], env=env)
        self.procs.append(cg)
        self.cg = cg.pid
        wait_port(self.cg_port, "claimgate")
        # The same config on another port, exporting every request's spans.
        self.sink = OtlpSink()
        self.otlp_port = free_port()
        traced_config = os.path.join(self.work, "claimgate-otlp.toml")
        with open(config) as f, open(traced_config, "w") as g:
            g.write(
                f.read()
                .replace(f'listen = "127.0.0.1:{self.cg_port}"', f'listen = "127.0.0.1:{self.otlp_port}"')
                .replace(f'{self.work}/audit.log', f'{self.work}/audit-otlp.log')
            )
        traced = subprocess.Popen(
            [a.bin, "serve", "--config", traced_config],
            env=dict(env, OTEL_EXPORTER_OTLP_ENDPOINT=self.sink.url),
        )
        self.procs.append(traced)
        wait_port(self.otlp_port, "claimgate (trace export)")

        bearer = {"Authorization": f"Bearer {self.token}"}
        cg_url = f"http://127.0.0.1:{self.cg_port}"
        key_id, secret, session = assume_role(cg_url, self.token)
        # Signed afresh for each run: a run may start long after the setup.
        def sts():
            return sigv4_headers(f"127.0.0.1:{self.cg_port}", "GET", OBJECT_1K, key_id, secret, session)

        self.targets = {
            "direct": (f"http://127.0.0.1:{self.origin_port}", {}, origin.pids),
            "nginx": (f"http://127.0.0.1:{self.nginx_port}", {}, proxy.pids),
            "claimgate": (cg_url, bearer, [self.cg]),
            "claimgate-sts": (cg_url, sts, [self.cg]),
            "claimgate-otlp": (f"http://127.0.0.1:{self.otlp_port}", bearer, [traced.pid]),
        }
        # Every target serves every request of the runs before anything is measured.
        for name in self.targets:
            url, headers, _ = self.target(name)
            check(url + OBJECT_1K, headers)
            if name != "claimgate-sts":
                check(url + PUT_PATH, headers, "PUT", b"x" * 1024)

    def target(self, name):
        """A target's URL, headers (an STS request is signed afresh each time) and pids."""
        url, headers, pids = self.targets[name]
        return url, headers() if callable(headers) else headers, pids

    def trim_audit(self):
        """Empties claimgate's audit log between runs (it appends; a full run would otherwise
        leave gigabytes of records in RAM)."""
        for name in ("audit.log", "audit-otlp.log"):
            try:
                os.truncate(os.path.join(self.work, name), 0)
            except OSError:
                pass

    def stop(self):
        for p in reversed(self.procs):
            p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        for n in self.nginxes:
            n.stop()
        time.sleep(0.3)
        shutil.rmtree(self.work, ignore_errors=True)


# ---- running the load -------------------------------------------------------------------


def wrk(setup, target, path, duration, conns, body=0, delay_ms=0):
    url, headers, pids = setup.target(target)
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "-s", WRK_LUA]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    cmd.append(url + path)
    env = dict(os.environ, WRK_BODY=str(body), WRK_DELAY_MS=str(delay_ms))
    reset_peak(pids)
    perf = None
    if setup.args.profile and target.startswith("claimgate"):
        # Software clock (no PMU needed in a VM); DWARF stacks so inlined frames are named.
        out_file = os.path.join(setup.args.profile, f"{setup.workload}-{target}.perf")
        perf = subprocess.Popen(
            ["perf", "record", "-F", "499", "-e", "cpu-clock", "-g", "--call-graph", "dwarf,16384",
             "-p", str(pids[0]), "-o", out_file, "--", "sleep", str(max(duration - 1, 1))],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    setup.trim_audit()
    cpu0, (sw0, pre0) = cpu_seconds(pids), context_switches(pids)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    cpu1, (sw1, pre1) = cpu_seconds(pids), context_switches(pids)
    if perf:
        perf.wait()
    r = json.loads(out.strip().splitlines()[-1])
    n = max(r["requests"], 1)
    return {
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "mbps": (r["requests"] * max(body, 0) + r["bytes"]) / (r["duration_us"] / 1e6) / MIB,
        "p50": r["p50_us"] / 1000,
        "p99": r["p99_us"] / 1000,
        "p999": r["p999_us"] / 1000,
        "cpu_us": (cpu1 - cpu0) * 1e6 / n,
        "switches": (sw1 - sw0) / n,
        "preempted": (pre1 - pre0) / n,
        "rss": peak_mib(pids),
        "errors": r["socket_errors"] + r["status_errors"],
        "requests": r["requests"],
    }


def curl(setup, target, method, path):
    url, headers, pids = setup.target(target)
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{time_total}"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    if method == "PUT":
        cmd += ["-T", setup.upload]
    cmd.append(url + path)
    reset_peak(pids)
    cpu0 = cpu_seconds(pids)
    code, seconds = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    cpu1 = cpu_seconds(pids)
    if method == "PUT":
        try:
            os.remove(os.path.join(setup.work, "www") + path)  # the store is RAM: free it
        except OSError:
            pass
    size = setup.args.stream_mib
    return {
        "mbps": size / float(seconds),
        "seconds": float(seconds),
        "cpu_us": (cpu1 - cpu0) * 1e6,
        "rss": peak_mib(pids),
        "errors": 0 if code.startswith("2") else 1,
        "requests": 1,
    }


def idle_connections(setup, count):
    """Opens `count` keep-alive connections to claimgate, each serving one GET, and holds
    them; returns claimgate's RSS before and with them open."""
    url, headers, pids = setup.targets["claimgate"]
    before = status_kib(setup.cg, "VmRSS") / 1024
    request = (
        f"GET {OBJECT_1K} HTTP/1.1\r\nHost: 127.0.0.1:{setup.cg_port}\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + "\r\n"
    ).encode()
    held, failed = [], 0
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", setup.cg_port))
        s.sendall(request)
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(65536)
        head, _, body = got.partition(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(body) < length:
            body += s.recv(65536)
        if not head.startswith(b"HTTP/1.1 200"):
            failed += 1
        held.append(s)
    time.sleep(1.0)
    with_open = status_kib(setup.cg, "VmRSS") / 1024
    for s in held:
        s.close()
    return before, with_open, failed


# ---- the report ---------------------------------------------------------------------------


def med(runs, key):
    return statistics.median(r[key] for r in runs)


def machine():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(
        ["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    return (
        f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
        f"{nginx}, tree {commit or '?'}, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}\n"
        f"# command: {' '.join(sys.argv)}"
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI smoke test: short runs, no goals judged")
    p.add_argument("--bin", default=os.environ.get("BIN", os.path.join(ROOT, "target/release/claimgate")))
    p.add_argument("--duration", type=int, help="seconds per wrk run (default 10, quick 2)")
    p.add_argument("--rounds", type=int, help="rounds over the targets (default 3, quick 1)")
    p.add_argument("--conns", type=int, default=64)
    p.add_argument("--workers", type=int, help="claimgate's [server] workers (default: one per core)")
    p.add_argument("--stream-mib", type=int, help="size of the streamed object (default 1024, quick 64)")
    p.add_argument("--idle", type=int, help="idle connections to hold (default 10000, quick 500)")
    p.add_argument("--profile", metavar="DIR", help="perf-record claimgate in each of its runs into DIR")
    p.add_argument(
        "--only", default="get1k,paced,get1m,put1m,stream,idle", help="comma-separated workloads to run"
    )
    a = p.parse_args()
    a.duration = a.duration or (2 if a.quick else 10)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.stream_mib = a.stream_mib or (64 if a.quick else 1024)
    a.idle = a.idle if a.idle is not None else (500 if a.quick else 10000)
    only = set(a.only.split(","))
    for tool in ("nginx", "wrk", "curl"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed: apt-get install -y nginx wrk curl")
    if not os.access(a.bin, os.X_OK):
        sys.exit(f"no claimgate binary at {a.bin}: cargo build --release (or --bin PATH)")
    # Room for the idle connections, in this process and (inherited) in claimgate.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.idle + 2000
    if hard != resource.RLIM_INFINITY and hard < want:
        print(f"open-file limit {hard}: holding {hard - 2000} idle connections, not {a.idle}")
        a.idle = max(hard - 2000, 0)
        want = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))

    if a.profile:
        os.makedirs(a.profile, exist_ok=True)
    setup = Setup(a)
    results = {}  # (workload, target) -> [run]
    try:
        setup.start()
        print(f"# {machine()}")
        print(f"# {a.rounds} round(s), {a.duration} s per wrk run, {a.conns} connections, 2 wrk threads\n")
        rnd = lambda wl, t, r: results.setdefault((wl, t), []).append(r)  # noqa: E731
        for _ in range(a.rounds):
            setup.workload = "get1k"
            if "get1k" in only:
                for t in ("direct", "nginx", "claimgate", "claimgate-sts", "claimgate-otlp"):
                    rnd("get1k", t, wrk(setup, t, OBJECT_1K, a.duration, a.conns))
            setup.workload = "get1m"
            if "get1m" in only:
                for t in ("direct", "nginx", "claimgate"):
                    rnd("get1m", t, wrk(setup, t, OBJECT_1M, a.duration, a.conns))
            setup.workload = "put1m"
            if "put1m" in only:
                for t in ("direct", "nginx", "claimgate"):
                    rnd("put1m", t, wrk(setup, t, PUT_PATH, a.duration, a.conns, body=MIB))
            if "stream" in only:
                for t in ("direct", "nginx", "claimgate"):
                    rnd("stream-get", t, curl(setup, t, "GET", OBJECT_BIG))
                    rnd("stream-put", t, curl(setup, t, "PUT", PUT_BIG))
        if "paced" in only:
            saturated = med(results.get(("get1k", "claimgate"), [{"rps": 2000}]), "rps")
            rate = saturated / 2
            delay = max(1, round(a.conns * 1000 / rate))
            a.saturated, a.delay = saturated, delay
            setup.workload = "paced"
            for _ in range(a.rounds):
                for t in ("direct", "nginx", "claimgate"):
                    rnd("paced", t, wrk(setup, t, OBJECT_1K, a.duration, a.conns, delay_ms=delay))
        idle = idle_connections(setup, a.idle) if "idle" in only and a.idle else None
    finally:
        setup.stop()
    exported = (setup.sink.posts, setup.sink.bytes) if hasattr(setup, "sink") else (0, 0)
    a.exported = exported

    report(a, results, idle)
    errors = sum(r["errors"] for runs in results.values() for r in runs) + (idle[2] if idle else 0)
    if errors:
        print(f"\nFAILED: {errors} request(s) failed (non-2xx answers or socket errors)")
        return 1
    return 0


def report(a, results, idle):
    titles = {
        "get1k": "1 KiB GET, saturating",
        "paced": "1 KiB GET, paced near half claimgate's saturating rate"
        + (
            f" ({a.delay} ms between a connection's requests: claimgate ran at "
            f"{med(results[('paced', 'claimgate')], 'rps') / a.saturated:.2f}× its saturating rate)"
            if ("paced", "claimgate") in results
            else ""
        ),
        "get1m": "1 MiB GET",
        "put1m": "1 MiB PUT",
        "stream-get": f"{a.stream_mib} MiB streamed GET (curl, one at a time)",
        "stream-put": f"{a.stream_mib} MiB streamed PUT (curl, one at a time)",
    }
    base = {"get1k": "nginx", "paced": "direct", "get1m": "nginx", "put1m": "nginx"}
    base.update({"stream-get": "direct", "stream-put": "direct"})
    for wl, title in titles.items():
        rows = [(t, runs) for (w, t), runs in results.items() if w == wl]
        if not rows:
            continue
        print(f"## {title}")
        streamed = wl.startswith("stream")
        if streamed:
            print("| target | MiB/s | range | CPU ms per transfer | peak RSS MiB | vs " + base[wl] + " |")
            print("|---|---:|---:|---:|---:|---:|")
        else:
            print(
                "| target | req/s | range | MiB/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req | ctx sw/req (preempted) | peak RSS MiB | vs "
                + base[wl]
                + " |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        ref = dict(rows).get(base[wl])
        for t, runs in rows:
            key = "mbps" if streamed or wl in ("get1m", "put1m") else "rps"
            ratio = med(runs, key) / med(ref, key) if ref else float("nan")
            if wl == "paced":
                ratio_s = f"+{med(runs, 'p99') - med(ref, 'p99'):.2f} ms p99"
            else:
                ratio_s = f"{ratio:.2f}x"
            lo, hi = min(r[key] for r in runs), max(r[key] for r in runs)
            rss = max(r["rss"] for r in runs)
            if streamed:
                print(
                    f"| {t} | {med(runs, 'mbps'):.0f} | {lo:.0f}–{hi:.0f} | {med(runs, 'cpu_us') / 1000:.0f} "
                    f"| {rss:.1f} | {ratio_s} |"
                )
            else:
                print(
                    f"| {t} | {med(runs, 'rps'):.0f} | {min(r['rps'] for r in runs):.0f}–{max(r['rps'] for r in runs):.0f} "
                    f"| {med(runs, 'mbps'):.0f} | {med(runs, 'p50'):.2f} | {med(runs, 'p99'):.2f} "
                    f"| {med(runs, 'p999'):.2f} | {med(runs, 'cpu_us'):.1f} "
                    f"| {med(runs, 'switches'):.2f} ({med(runs, 'preempted'):.2f}) "
                    f"| {rss:.1f} | {ratio_s} |"
                )
        print()
    if idle:
        before, with_open, failed = idle
        print(f"## {a.idle} idle keep-alive connections to claimgate (each served one GET)")
        print(
            f"RSS {before:.1f} MiB before, {with_open:.1f} MiB with them open "
            f"({(with_open - before) * 1024 / max(a.idle, 1):.1f} KiB per connection); {failed} failed\n"
        )
    goals(a, results, idle)


def goals(a, results, idle):
    def ratio(wl, t, ref, key):
        if (wl, t) not in results or (wl, ref) not in results:
            return None
        return med(results[(wl, t)], key) / med(results[(wl, ref)], key)

    checks = []
    r = ratio("get1k", "claimgate", "nginx", "rps")
    checks.append(("1 KiB GET, bearer ≥ 0.90× nginx proxy_pass", r, r is not None and r >= 0.9, "x"))
    r = ratio("get1k", "claimgate-sts", "claimgate", "rps")
    checks.append(("1 KiB GET, STS session ≥ 0.85× bearer", r, r is not None and r >= 0.85, "x"))
    r = ratio("get1k", "claimgate-otlp", "claimgate", "rps")
    posts, nbytes = getattr(a, "exported", (0, 0))
    print(f"OTLP sink: {posts} exports, {nbytes / MIB:.1f} MiB of spans taken from claimgate-otlp\n")
    checks.append(
        ("1 KiB GET, every request's spans exported ≥ 0.85× not exported", r, r is not None and r >= 0.85 and posts > 0, "x")
    )
    for wl in ("get1m", "put1m"):
        r = ratio(wl, "claimgate", "nginx", "mbps")
        checks.append((f"{titles_short(wl)} ≥ 0.90× nginx proxy_pass", r, r is not None and r >= 0.9, "x"))
    for wl in ("stream-get", "stream-put"):
        r = ratio(wl, "claimgate", "direct", "mbps")
        checks.append((f"{a.stream_mib} MiB {wl[7:].upper()} ≥ 0.90× direct", r, r is not None and r >= 0.9, "x"))
    streams = results.get(("stream-get", "claimgate"), []) + results.get(("stream-put", "claimgate"), [])
    if streams:
        rss = max(x["rss"] for x in streams)
        checks.append((f"{a.stream_mib} MiB streams: claimgate peak RSS < 64 MiB", rss, rss < 64, " MiB"))
    if idle:
        checks.append((f"{a.idle} idle connections: RSS < 256 MiB", idle[1], idle[1] < 256, " MiB"))
    if ("paced", "claimgate") in results:
        added = med(results[("paced", "claimgate")], "p99") - med(results[("paced", "direct")], "p99")
        checks.append(("added p99 at half saturation ≤ 1 ms over direct", added, added <= 1.0, " ms"))
    print("## Goals (issue 10)" + (" — not judged in --quick mode" if a.quick else ""))
    for name, value, ok, unit in checks:
        shown = "not run" if value is None else (f"{value:.2f}{unit}")
        verdict = "" if a.quick or value is None else ("met" if ok else "NOT met")
        print(f"- {name}: {shown} {verdict}")


def titles_short(wl):
    return {"get1m": "1 MiB GET", "put1m": "1 MiB PUT"}[wl]


if __name__ == "__main__":
    sys.exit(main())
