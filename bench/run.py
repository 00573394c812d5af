#!/usr/bin/env python3
"""Benchmark driver (called by bench/run.sh after the release build).

Targets, all on 127.0.0.1 with the servers pinned to core 0 and wrk to core 1:
  direct  the upstream fixture (examples/bench_upstream.rs), one worker thread
  nginx   nginx, one worker, keep-alive pool to the fixture, fixed 2 KiB Authorization header, no buffering
  proxy   dcr-proxy with a pre-issued grant (examples/bench_proxy.rs), one worker thread: bearer lookup + swap;
          the shipped defaults (the byte-level fast path for plain HTTP/1.1, src/server/fast_path; the upstream pool
          driven in the request's task for the rest, src/proxy/pool.rs)
  redis   the same with `[store] backend = "redis"` on a redis-server of its own (ephemeral loopback port, pinned
          to core 0 with the proxy): bearer lookups are cache hits, as on a replica under load
Optional targets (same run, same rounds):
  proxy-ct  BENCH_CURRENT_THREAD=1: dcr-proxy on tokio's current-thread runtime instead of one worker thread
  hyper-path  BENCH_HYPER_PATH=1: dcr-proxy with server.fast_path = false (hyper serves every request)
  hyper-util  BENCH_HYPER_UTIL=1: dcr-proxy with server.fast_path = false and upstream.drive_in_request_task = false
            (hyper-util's pooled client: the defaults before issue 13)
  per-core  BENCH_PER_CORE=1: dcr-proxy with server.runtime = "per-core" (a current-thread runtime per thread, each
            with its own SO_REUSEPORT listener; src/server/per_core.rs)
  main      BENCH_MAIN_EXAMPLES=DIR: the bench_proxy example of another build (e.g. main's target/release/examples),
            for before/after ratios in one run
Runs are interleaved (direct nginx proxy redis ..., direct nginx proxy redis ...) for BENCH_ROUNDS rounds; medians
are reported with the ratios proxy/nginx and proxy/direct. Also: CPU time per request of the proxying process, SSE
per-event delay, the store's memory per grant, idle RSS and start-to-ready time of the real binary.
BENCH_SCENARIOS=name,name limits the scenarios (e.g. "small c16,SSE 100 events c16"); BENCH_REDIS=0 leaves out the
Redis target, BENCH_BINARY=0 the real binary's start and RSS, BENCH_MEMORY_MAX=0 the store's memory.
BENCH_UNPINNED=1 (runtime shape, issue 13): the servers may use cores 0 and 1 (wrk stays on core 1 and competes
with them), nginx runs `worker_processes 2`, the proxy 2 worker threads and per-core 2 threads; e.g. BENCH_UNPINNED=1 BENCH_PER_CORE=1 BENCH_REDIS=0.
"""

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, "target", "release")
EX = os.path.join(REL, "examples")
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
MEMORY_MAX = int(os.environ.get("BENCH_MEMORY_MAX", "1000000"))
PORTS = {"direct": 39100, "nginx": 39101, "proxy": 39102, "binary": 39103, "redis": 39104, "proxy-ct": 39105,
         "main": 39106, "hyper-util": 39107, "per-core": 39108, "hyper-path": 39109}
HYPER_PATH = os.environ.get("BENCH_HYPER_PATH", "") == "1"
HYPER_UTIL = os.environ.get("BENCH_HYPER_UTIL", "") == "1"
MAIN_EXAMPLES = os.environ.get("BENCH_MAIN_EXAMPLES", "")
CURRENT_THREAD = os.environ.get("BENCH_CURRENT_THREAD", "") == "1"
WITH_REDIS = os.environ.get("BENCH_REDIS", "1") == "1"
PER_CORE = os.environ.get("BENCH_PER_CORE", "") == "1"
UNPINNED = os.environ.get("BENCH_UNPINNED", "") == "1"
# Cores the servers run on, and their workers (nginx processes, proxy threads).
SERVER_CORES = "0,1" if UNPINNED else "0"
WORKERS = 2 if UNPINNED else 1
TICK = os.sysconf("SC_CLK_TCK")

SCENARIOS = [
    # name, path, connections, lua body (None for GET)
    ("small c1", "/small", 1, None),
    ("small c16", "/small", 16, None),
    ("small c64", "/small", 64, None),
    ("1MiB download c16", "/big", 16, None),
    ("1MiB upload c16", "/upload", 16, 1024 * 1024),
    ("SSE 100 events c16", "/sse?n=100", 16, None),
]
if os.environ.get("BENCH_SCENARIOS"):
    _wanted = os.environ["BENCH_SCENARIOS"].split(",")
    SCENARIOS = [s for s in SCENARIOS if s[0] in _wanted]


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / TICK


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(port, path, conns, body, auth):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{SECONDS}s", "--latency"]
    if auth:
        cmd += ["-H", f"Authorization: Bearer {auth}"]
    script = None
    if body:
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        script.write(f'wrk.method = "POST"\nwrk.body = string.rep("x", {body})\n'
                     'wrk.headers["Content-Type"] = "application/octet-stream"\n')
        script.close()
        cmd += ["-s", script.name]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    if script:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    total = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "requests": total,
            "non2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors.group(1) if errors else ""}


NGINX_CONF = """
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  upstream fixture {{ server 127.0.0.1:{up}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    location / {{
      proxy_pass http://fixture;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer {token}";
      proxy_buffering off;
      proxy_request_buffering off;
    }}
  }}
}}
"""


def start(cmd, **kw):
    return subprocess.Popen(["taskset", "-c", SERVER_CORES] + cmd, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_proxy(procs, examples, port, workers, redis_url="", request_task=True, per_core=False, fast_path=True):
    """bench_proxy on `port`; returns (process, access token)."""
    env = dict(os.environ, BENCH_REQUEST_TASK="1" if request_task else "0", BENCH_PER_CORE="1" if per_core else "0",
               BENCH_FAST_PATH="1" if fast_path else "0")
    px = start([os.path.join(examples, "bench_proxy"), str(port), f"http://127.0.0.1:{PORTS['direct']}", str(workers),
                redis_url], stdout=subprocess.PIPE, text=True, env=env)
    procs.append(px)
    token = px.stdout.readline().strip().split("=", 1)[1]
    wait_port(port)
    return px, token


def main():
    procs = []
    tmp = tempfile.mkdtemp(prefix="dcr-bench-")
    results = {"machine": machine(), "seconds_per_run": SECONDS, "rounds": ROUNDS, "runs": [], "summary": {},
               "server_cores": SERVER_CORES, "workers": WORKERS}
    try:
        up = start([os.path.join(EX, "bench_upstream"), str(PORTS["direct"])], stdout=subprocess.DEVNULL)
        procs.append(up)
        wait_port(PORTS["direct"])
        token2k = "EwB4A8l6BAAU" + "x" * 2048
        with open(os.path.join(tmp, "nginx.conf"), "w") as f:
            f.write(NGINX_CONF.format(dir=tmp, up=PORTS["direct"], port=PORTS["nginx"], token=token2k, workers=WORKERS))
        ngx = start(["nginx", "-c", os.path.join(tmp, "nginx.conf")], stderr=subprocess.DEVNULL)
        procs.append(ngx)
        wait_port(PORTS["nginx"])
        px, token = start_proxy(procs, EX, PORTS["proxy"], WORKERS)

        targets = {
            "direct": (PORTS["direct"], "", lambda: [up.pid]),
            "nginx": (PORTS["nginx"], "", lambda: [ngx.pid] + children(ngx.pid)),
            "proxy": (PORTS["proxy"], token, lambda: [px.pid]),
        }
        if WITH_REDIS:
            rport = free_port()
            rs = start(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                       stdout=subprocess.DEVNULL)
            procs.append(rs)
            wait_port(rport)
            pr, rtoken = start_proxy(procs, EX, PORTS["redis"], 1, f"redis://127.0.0.1:{rport}/0")
            targets["redis"] = (PORTS["redis"], rtoken, lambda: [pr.pid, rs.pid])
        if CURRENT_THREAD:
            pc, ctoken = start_proxy(procs, EX, PORTS["proxy-ct"], 0)
            targets["proxy-ct"] = (PORTS["proxy-ct"], ctoken, lambda: [pc.pid])
        if HYPER_UTIL:
            pt, ttoken = start_proxy(procs, EX, PORTS["hyper-util"], 1, request_task=False, fast_path=False)
            targets["hyper-util"] = (PORTS["hyper-util"], ttoken, lambda: [pt.pid])
        if PER_CORE:
            pp, ptoken = start_proxy(procs, EX, PORTS["per-core"], WORKERS, per_core=True)
            targets["per-core"] = (PORTS["per-core"], ptoken, lambda: [pp.pid])
        if HYPER_PATH:
            pf, ftoken = start_proxy(procs, EX, PORTS["hyper-path"], 1, fast_path=False)
            targets["hyper-path"] = (PORTS["hyper-path"], ftoken, lambda: [pf.pid])
        if MAIN_EXAMPLES:
            pm, mtoken = start_proxy(procs, MAIN_EXAMPLES, PORTS["main"], 1)
            targets["main"] = (PORTS["main"], mtoken, lambda: [pm.pid])
        for rnd in range(ROUNDS):
            for name, path, conns, body in SCENARIOS:
                for target, (port, auth, pids) in targets.items():
                    before = cpu_seconds(pids())
                    r = run_wrk(port, path, conns, body, auth)
                    cpu = cpu_seconds(pids()) - before
                    r.update({"round": rnd, "scenario": name, "target": target,
                              "cpu_us_per_request": 1e6 * cpu / max(r["requests"], 1)})
                    results["runs"].append(r)
                    print(f"  round {rnd + 1} {name:20} {target:7} {r['rps']:>10.0f} req/s  p50 {r['p50_ms']:.3f} ms"
                          f"  p99 {r['p99_ms']:.3f} ms  cpu {r['cpu_us_per_request']:.1f} us/req", flush=True)

        sse = {}
        for target, (port, auth, _) in targets.items():
            out = subprocess.run(["taskset", "-c", "1", os.path.join(EX, "bench_sse_latency"),
                                  f"http://127.0.0.1:{port}", auth, "20"], capture_output=True, text=True, check=True)
            sse[target] = json.loads(out.stdout)
        results["sse_event_delay"] = sse
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    results["binary"] = binary_start_and_idle() if os.environ.get("BENCH_BINARY", "1") == "1" else {}
    results["memory"] = [json.loads(subprocess.run([os.path.join(EX, "bench_memory"), str(n)], capture_output=True,
                                                   text=True, check=True).stdout)
                         for n in (10_000, 100_000, 1_000_000) if n <= MEMORY_MAX]
    summarize(results)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "latest.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nraw results: bench/results/latest.json")


def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "nginx": nginx, "date": time.strftime("%Y-%m-%d")}


def binary_start_and_idle():
    """Start-to-ready of the real binary with the local IdP, and its idle resident memory."""
    with open(os.path.join(ROOT, "proxy.toml")) as f:
        text = f.read().replace("127.0.0.1:8080", f"127.0.0.1:{PORTS['binary']}")
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(text)
    cfg.close()
    samples = []
    rss_kib = 0
    for _ in range(5):
        t0 = time.perf_counter()
        p = subprocess.Popen([os.path.join(REL, "dcr-proxy"), "--config", cfg.name], stderr=subprocess.DEVNULL)
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORTS['binary']}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.001)
        samples.append((time.perf_counter() - t0) * 1000)
        time.sleep(1)
        with open(f"/proc/{p.pid}/status") as f:
            rss_kib = int(next(l for l in f if l.startswith("VmRSS")).split()[1])
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=5)
    os.unlink(cfg.name)
    return {"start_to_ready_ms_median": statistics.median(samples), "idle_rss_mib": rss_kib / 1024}


def summarize(results):
    rows = []
    summary = {}
    for name, *_ in SCENARIOS:
        med = {}
        for target in ("direct", "nginx", "proxy"):
            runs = [r for r in results["runs"] if r["scenario"] == name and r["target"] == target]
            med[target] = {k: statistics.median(r[k] for r in runs)
                           for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")}
        summary[name] = med
        d, n, p = med["direct"], med["nginx"], med["proxy"]
        rows.append(f"| {name} | {d['rps']:.0f} | {n['rps']:.0f} | {p['rps']:.0f} | {p['rps'] / n['rps']:.2f} | "
                    f"{p['rps'] / d['rps']:.2f} | {n['p50_ms']:.3f} / {n['p99_ms']:.3f} | "
                    f"{p['p50_ms']:.3f} / {p['p99_ms']:.3f} | {n['cpu_us_per_request']:.1f} | "
                    f"{p['cpu_us_per_request']:.1f} |")
    results["summary"] = summary
    others = [t for t in ("redis", "proxy-ct", "hyper-path", "hyper-util", "per-core", "main") if any(r["target"] == t for r in results["runs"])]
    extra_rows = []
    for name, *_ in SCENARIOS:
        for target in others:
            runs = [r for r in results["runs"] if r["scenario"] == name and r["target"] == target]
            m = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")}
            summary[name][target] = m
            n, p = summary[name]["nginx"], summary[name]["proxy"]
            extra_rows.append(f"| {name} | {target} | {m['rps']:.0f} | {m['rps'] / n['rps']:.2f} | "
                              f"{p['rps'] / m['rps']:.2f} | {m['p50_ms']:.3f} / {m['p99_ms']:.3f} | "
                              f"{m['cpu_us_per_request']:.1f} | {p['cpu_us_per_request'] / m['cpu_us_per_request']:.2f} |")
    print("\n| scenario | direct req/s | nginx req/s | proxy req/s | proxy/nginx | proxy/direct | nginx p50/p99 ms "
          "| proxy p50/p99 ms | nginx CPU µs/req | proxy CPU µs/req |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if extra_rows:
        print("\n| scenario | target | req/s | target/nginx | proxy/target req/s | p50/p99 ms | CPU µs/req "
              "| proxy/target CPU |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(extra_rows))
    # The host's speed drifts between rounds (virtualised cores): a ratio taken inside each round, then its median
    # over the rounds, is steadier than a ratio of medians.
    targets = [t for t in ("proxy",) + tuple(others) if any(r["target"] == t for r in results["runs"])]
    paired = {}
    ratio_rows = []
    for name, *_ in SCENARIOS:
        by_round = {}
        for r in results["runs"]:
            if r["scenario"] == name:
                by_round.setdefault(r["round"], {})[r["target"]] = r
        cells = []
        for target in targets:
            rps = [rd[target]["rps"] / rd["nginx"]["rps"] for rd in by_round.values() if target in rd and rd["nginx"]["rps"]]
            cpu = [rd[target]["cpu_us_per_request"] / rd["nginx"]["cpu_us_per_request"] for rd in by_round.values()
                   if target in rd and rd["nginx"]["cpu_us_per_request"]]
            paired.setdefault(name, {})[target] = {"rps_vs_nginx": statistics.median(rps), "cpu_vs_nginx": statistics.median(cpu)}
            cells.append(f"{statistics.median(rps):.2f} / {statistics.median(cpu):.2f}")
        ratio_rows.append(f"| {name} | " + " | ".join(cells) + " |")
    results["paired"] = paired
    print("\nsame-round ratios to nginx, median over rounds (req/s / CPU per request):")
    print("| scenario | " + " | ".join(targets) + " |")
    print("|---|" + "---|" * len(targets))
    print("\n".join(ratio_rows))
    if "small c1" in summary:
        c1 = summary["small c1"]
        print("\nadded median latency at c1: " + ", ".join(
            f"{t} {1000 * (v['p50_ms'] - c1['direct']['p50_ms']):.0f} µs" for t, v in c1.items() if t != "direct"))
    sse = results["sse_event_delay"]
    print("SSE per-event delay p50/p99 µs: " + ", ".join(f"{t} {v['p50_us']}/{v['p99_us']}" for t, v in sse.items()))
    b = results["binary"]
    if b:
        print(f"binary: start to ready {b['start_to_ready_ms_median']:.1f} ms, idle RSS {b['idle_rss_mib']:.1f} MiB")
    for m in results["memory"]:
        print(f"store: {m['grants']} grants, {m['rss_per_grant']} B/grant resident, "
              f"{m['overhead_per_grant']} B beyond the {m['token_bytes_per_grant']:.0f} token bytes, "
              f"filled in {m['fill_seconds']} s; snapshot {m['snapshot_bytes'] / 2**20:.0f} MiB written in "
              f"{m['snapshot_write_seconds']} s, loaded in {m['snapshot_load_seconds']} s")


if __name__ == "__main__":
    sys.exit(main())
