#!/usr/bin/python3
"""vit serve under load: wrk posts one image over C connections for D seconds against a
server started at a free port on 127.0.0.1, for each --max-batch and each connection count;
reports requests/s, latency percentiles, the mean batch size the server formed (from its
/metrics), and every non-2xx answer and socket error. The load generator shares the machine
with the server: on 2 cores, wrk's threads take CPU from the model.

    tools/bench_serve.py --connections 1 4 16 64 --max-batch 1 16 --duration 10

--check exits non-zero unless every answer was a 200, no socket failed, and each server
answered /healthz afterwards and exited 0 on SIGTERM (the test suite runs it briefly)."""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from serve_util import Server  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def wrk(port, route, image, connections, duration, threads):
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(f"""local f = assert(io.open({json.dumps(image)}, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/octet-stream"
""")
    try:
        out = subprocess.run(["wrk", "-t", str(min(threads, connections)), "-c", str(connections),
                              "-d", f"{duration}s", "--timeout", "10s", "--latency", "-s",
                              script.name, f"http://127.0.0.1:{port}{route}"],
                             capture_output=True, text=True, timeout=duration + 60)
    finally:
        os.unlink(script.name)
    if out.returncode != 0:
        sys.exit(f"bench_serve: wrk failed: {out.stderr.strip()}")
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


def metrics(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    value = lambda name: float(re.search(rf"^{name} ([\d.e+]+)$", text, re.M).group(1))  # noqa: E731
    statuses = {int(s): int(n) for s, n in re.findall(r'^vit_requests_total\{route="/v1/[a-z]+",'
                                                      r'status="(\d+)"\} (\d+)$', text, re.M)}
    count = value("vit_batch_size_count")
    return {"mean_batch": value("vit_batch_size_sum") / count if count else 0.0,
            "forward_passes": int(count), "statuses": statuses}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vit", default=os.path.join(ROOT, "build", "release", "tools", "vit"))
    p.add_argument("--model", action="append", help="model files to serve (default: the bundled)")
    p.add_argument("--route", default="/v1/classify", help="/v1/classify or /v1/explain")
    p.add_argument("--image", default=os.path.join(ROOT, "datasets", "samples", "sneaker_00009.png"))
    p.add_argument("--connections", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--max-batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--max-delay-ms", type=float, default=2.0)
    p.add_argument("--http-threads", type=int, default=16, help="vit serve --http-threads")
    p.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--check", action="store_true", help="fail unless every answer was a 200")
    args = p.parse_args()
    if not shutil.which("wrk"):
        sys.exit("bench_serve: wrk is missing: run tools/install-deps.sh --test")
    Server.vit = args.vit
    models = [a for m in (args.model or []) for a in ("--model", m)]
    rows, problems = [], []
    print(f"{'max batch':>9} {'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
          f"{'batch':>5} {'non-2xx':>7} {'sock err':>8}")
    for max_batch in args.max_batch:
        for connections in args.connections:
            server = Server(*models, "--max-batch", str(max_batch), "--max-delay-ms",
                            str(args.max_delay_ms), "--http-threads", str(args.http_threads),
                            "--max-connections", str(max(128, connections + args.http_threads)))
            try:
                row = {"max_batch": max_batch, "connections": connections, "route": args.route,
                       "http_threads": args.http_threads, "max_delay_ms": args.max_delay_ms,
                       **wrk(server.port, args.route, args.image, connections, args.duration,
                             args.wrk_threads)}
                row.update(metrics(server.port))
                status, _, _ = server.request("GET", "/healthz")
                row["healthy_after"] = status == 200
            finally:
                row["exit_code"] = server.stop()
            rows.append(row)
            print(f"{max_batch:>9} {connections:>5} {row['requests_per_second']:>8.1f} "
                  f"{row['latency_p50_ms']:>7.2f} {row['latency_p90_ms']:>7.2f} "
                  f"{row['latency_p99_ms']:>7.2f} {row['mean_batch']:>5.2f} {row['non_2xx']:>7} "
                  f"{row['socket_errors']:>8}", flush=True)
            if row["non_2xx"] or row["socket_errors"] or set(row["statuses"]) - {200}:
                problems.append(f"max batch {max_batch}, {connections} connections: "
                                f"{row['non_2xx']} non-2xx, {row['socket_errors']} socket errors, "
                                f"statuses {row['statuses']}")
            if not row["healthy_after"] or row["exit_code"] != 0:
                problems.append(f"max batch {max_batch}, {connections} connections: healthz "
                                f"{row['healthy_after']}, exit code {row['exit_code']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    for problem in problems:
        print("bench_serve: " + problem, file=sys.stderr)
    if args.check and problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
