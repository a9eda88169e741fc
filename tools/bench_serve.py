#!/usr/bin/python3
"""vit serve under load: wrk posts one image over C connections against a server started at
a free port on 127.0.0.1, for each --max-batch and each connection count, first --warmup
requests, then --requests more (or for --duration seconds). Reports requests/s, latency
percentiles, the mean batch size the server formed (from its /metrics), every non-2xx answer
and socket error, the server's resident memory after the warm-up and at the end (flat when
nothing leaks), and, measured in the same run, `vit bench` of the same model at each
--max-batch: served images/s as a fraction of the model's own. The load generator shares the
machine with the server: on 2 cores, wrk's thread takes CPU from the model.

    tools/bench_serve.py --connections 1 8 64 --max-batch 1 16 64 --requests 10000

--check exits non-zero unless every answer was a 200, no socket failed, each measurement got
at least 10 answers, and each server answered /healthz afterwards and exited 0 on SIGTERM (the
test suite runs it briefly)."""
import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from serve_util import Server  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def served(port, route):
    """Answers the server has given on `route` so far, whatever their status."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(int(n) for n in re.findall(rf'^vit_requests_total\{{route="{re.escape(route)}",'
                                          r'status="\d+"\} (\d+)$', text, re.M))


def wrk(port, route, image, connections, duration, threads, requests=0, pid=None, rss=None):
    """requests > 0: wrk is interrupted (SIGINT: it stops and reports, its rate over the time it
    ran) once the server has answered that many more; duration is then only an upper bound.
    With pid, the server's RSS is appended to `rss` after every fifth of them."""
    threads = min(threads, connections)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f"""local f = assert(io.open({json.dumps(image)}, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
""")
    try:
        start = served(port, route) if requests else 0
        proc = subprocess.Popen(["wrk", "-t", str(threads), "-c", str(connections), "-d",
                                 f"{duration}s", "--timeout", "10s", "--latency", "-s", script.name,
                                 f"http://127.0.0.1:{port}{route}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if requests:
            marks = [start + requests * k // 5 for k in range(1, 6)]
            while proc.poll() is None and marks:
                time.sleep(0.1)  # each poll costs the server's cores a Python HTTP client's work
                n = served(port, route)
                while marks and n >= marks[0]:
                    marks.pop(0)
                    if pid and rss is not None:
                        rss.append(round(rss_mb(pid), 1))
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=duration + 60)
    finally:
        os.unlink(script.name)
    if proc.returncode != 0:
        sys.exit(f"bench_serve: wrk failed: {stderr.strip()}")
    out = subprocess.CompletedProcess(proc.args, 0, stdout, stderr)
    text = out.stdout

    def seconds(value, unit):
        return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]
    latency = {p: seconds(v, u) for p, v, u in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$",
                                                           text, re.M)}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"requests": int(re.search(r"(\d+) requests in", text).group(1)),
            "requests_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
            "latency_p50_ms": 1000 * latency["50"], "latency_p90_ms": 1000 * latency["90"],
            "latency_p99_ms": 1000 * latency["99"],
            "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1)) / 1024


def bench(vit, model, batch):
    out = subprocess.run([vit, "bench", "--model", model, "--batch-size", str(batch), "--no-peak"],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        sys.exit(f"bench_serve: vit bench failed: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_second"]["median"]


def metrics(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    value = lambda name: float(re.search(rf"^{name} ([\d.e+]+)$", text, re.M).group(1))  # noqa: E731
    statuses = {int(s): int(n) for s, n in re.findall(r'^vit_requests_total\{route="/v1/[a-z]+",'
                                                      r'status="(\d+)"\} (\d+)$', text, re.M)}
    count = value("vit_batch_size_count")
    return {"mean_batch": value("vit_batch_size_sum") / count if count else 0.0,
            "forward_passes": int(count), "statuses": statuses}


def measure(args, models, first_model, rnd, max_batch, connections):
    """One cell: the model's own bench, then a fresh server under wrk (warm-up, then the
    measured requests), its metrics, health and exit code."""
    benched = None if args.no_bench else bench(args.vit, first_model, max_batch)
    with tempfile.NamedTemporaryFile("w+", suffix=".log", prefix="vit-serve-") as log:
        server = Server(*models, "--threads", str(args.threads), "--max-batch", str(max_batch),
                        "--max-delay-ms", str(args.max_delay_ms), "--http-threads",
                        str(args.http_threads), "--max-connections",
                        str(max(256, connections + args.http_threads)), log=log)
        row = {"round": rnd, "max_batch": max_batch, "connections": connections,
               "route": args.route, "http_threads": args.http_threads, "threads": args.threads,
               "max_delay_ms": args.max_delay_ms}
        try:
            warm = wrk(server.port, args.route, args.image, connections, args.duration,
                       args.wrk_threads, args.warmup) if args.warmup else None
            rss_warm, rss = rss_mb(server.proc.pid), []
            row.update(wrk(server.port, args.route, args.image, connections, args.duration,
                           args.wrk_threads, args.requests, server.proc.pid, rss))
            row["rss_after_warmup_mb"], row["rss_after_mb"] = rss_warm, rss_mb(server.proc.pid)
            row["rss_during_mb"] = rss
            row.update(metrics(server.port))
            if warm:  # the measured run's share of what /metrics counted
                row["warmup_non_2xx"] = warm["non_2xx"]
                row["warmup_socket_errors"] = warm["socket_errors"]
            if benched:
                row["bench_images_per_second"] = benched
                row["fraction_of_bench"] = row["requests_per_second"] / benched
            status, _, _ = server.request("GET", "/healthz")
            row["healthy_after"] = status == 200
        finally:
            row["exit_code"] = server.stop()
    return row


def row_problems(row, where):
    """What --check fails on in one cell."""
    problems = []
    if (row["non_2xx"] or row["socket_errors"] or row.get("warmup_non_2xx") or
            row.get("warmup_socket_errors") or set(row["statuses"]) - {200}):
        problems.append(f"{where}: {row['non_2xx']} non-2xx, {row['socket_errors']} "
                        f"socket errors, statuses {row['statuses']}")
    if row["requests"] < 10:  # a stalled server has no errors to show either
        problems.append(f"{where}: only {row['requests']} answers")
    if not row["healthy_after"] or row["exit_code"] != 0:
        problems.append(f"{where}: healthz {row['healthy_after']}, exit code {row['exit_code']}")
    return problems


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vit", default=os.path.join(ROOT, "build", "release", "tools", "vit"))
    p.add_argument("--model", action="append", help="model files to serve (default: the bundled)")
    p.add_argument("--route", default="/v1/classify", help="/v1/classify or /v1/explain")
    p.add_argument("--image", default=os.path.join(ROOT, "datasets", "samples", "sneaker_00009.png"))
    p.add_argument("--connections", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--max-batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--http-threads", type=int, default=64, help="vit serve --http-threads")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat every measurement; prints medians and the spread across rounds")
    p.add_argument("--threads", type=int, default=0, help="vit serve --threads (compute)")
    p.add_argument("--requests", type=int, default=0,
                   help="requests per measurement (0: run for --duration seconds)")
    p.add_argument("--warmup", type=int, default=2000, help="requests before each measurement")
    p.add_argument("--duration", type=int, default=10,
                   help="seconds per measurement (with --requests: the longest it may take)")
    p.add_argument("--no-bench", action="store_true", help="skip the vit bench comparison")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--check", action="store_true", help="fail unless every answer was a 200")
    args = p.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench_serve: wrk is missing: run tools/install-deps.sh --test")
    if args.rounds < 1:
        sys.exit("bench_serve: --rounds must be positive")
    Server.vit = args.vit
    models = [a for m in (args.model or []) for a in ("--model", m)]
    first_model = (args.model or [os.path.join(ROOT, "models", "vit_fmnist.safetensors")])[0]
    rows, problems = [], []
    header = (f"{'round':>5} {'max batch':>9} {'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p90 ms':>7} "
              f"{'p99 ms':>7} {'batch':>5} {'bench':>7} {'of bench':>8} {'RSS MB':>13} {'non-2xx':>7} "
              f"{'sock err':>8}")
    print(header)
    # Round by round, and within a round the model's own bench right before each server, so
    # that the machine's moods fall on both sides of every ratio.
    for rnd in range(1, args.rounds + 1):
        for max_batch in args.max_batch:
            for connections in args.connections:
                row = measure(args, models, first_model, rnd, max_batch, connections)
                rows.append(row)
                print(f"{rnd:>5} {max_batch:>9} {connections:>5} {row['requests_per_second']:>8.1f} "
                      f"{row['latency_p50_ms']:>7.2f} {row['latency_p90_ms']:>7.2f} "
                      f"{row['latency_p99_ms']:>7.2f} {row['mean_batch']:>5.2f} "
                      f"{row.get('bench_images_per_second', float('nan')):>7.0f} "
                      f"{row.get('fraction_of_bench', float('nan')):>8.2f} "
                      f"{row['rss_after_warmup_mb']:>6.1f}>{row['rss_after_mb']:<6.1f} {row['non_2xx']:>7} "
                      f"{row['socket_errors']:>8}", flush=True)
                problems += row_problems(row, f"round {rnd}, max batch {max_batch}, {connections} connections")
    if args.rounds > 1:
        print(f"\nmedians over {args.rounds} rounds (min-max)")
        for max_batch in args.max_batch:
            for connections in args.connections:
                cell = [r for r in rows if r["max_batch"] == max_batch and r["connections"] == connections]
                rps = [r["requests_per_second"] for r in cell]
                line = (f"max batch {max_batch:>3}, {connections:>3} connections: "
                        f"{statistics.median(rps):8.1f} req/s ({min(rps):.0f}-{max(rps):.0f}), p99 "
                        f"{statistics.median(r['latency_p99_ms'] for r in cell):.2f} ms")
                if not args.no_bench:
                    frac = [r["fraction_of_bench"] for r in cell]
                    line += (f", {statistics.median(frac):.2f} of bench ({min(frac):.2f}-{max(frac):.2f}), "
                             f"bench {statistics.median(r['bench_images_per_second'] for r in cell):.0f} img/s")
                print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    for problem in problems:
        print("bench_serve: " + problem, file=sys.stderr)
    if args.check and problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
