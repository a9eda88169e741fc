#!/usr/bin/python3
"""Two builds of vit against each other: `vit bench` of build A and build B, alternating round
by round in one run (the machine is shared and noisy: alternating spreads its moods over both),
then the per-round ratios B/A and their median. For a change that must not slow the fused path:

    tools/bench_ab.py --a /tmp/old/build/release/tools/vit --b build/release/tools/vit \\
        --rounds 10 -- --batch-size 32 --precision f32

Everything after `--` goes to `vit bench` (with --no-peak added). Prints a table and, with
--json FILE, writes every round's numbers."""
import argparse
import json
import statistics
import subprocess
import sys


def bench(vit, args):
    proc = subprocess.run([vit, "bench", "--no-peak"] + args, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_ab: '{vit} bench' failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="the reference vit executable")
    p.add_argument("--b", required=True, help="the vit executable under test")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--json", help="write every round here")
    p.add_argument("bench_args", nargs="*", help="vit bench flags (after --)")
    args = p.parse_args()
    if args.rounds <= 0:
        sys.exit("bench_ab: --rounds must be positive")
    bench_args = args.bench_args or ["--batch-size", "32"]
    rounds = []
    for r in range(args.rounds):
        a, b = bench(args.a, bench_args), bench(args.b, bench_args)
        row = {"round": r + 1, "a": a["images_per_second"]["median"],
               "b": b["images_per_second"]["median"], "a_rss_mb": a.get("peak_rss_mb"),
               "b_rss_mb": b.get("peak_rss_mb")}
        row["ratio"] = row["b"] / row["a"]
        rounds.append(row)
        print(f"round {r + 1}: A {row['a']:.1f} img/s, B {row['b']:.1f} img/s, "
              f"B/A {row['ratio']:.3f}", flush=True)
    ratios = [r["ratio"] for r in rounds]
    median = statistics.median(ratios)
    print(f"B/A median {median:.3f} (per round {min(ratios):.3f}-{max(ratios):.3f}); "
          f"A median {statistics.median(r['a'] for r in rounds):.1f} img/s, "
          f"B median {statistics.median(r['b'] for r in rounds):.1f} img/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bench_args": bench_args, "a": args.a, "b": args.b, "rounds": rounds,
                       "median_ratio": median}, f, indent=1)


if __name__ == "__main__":
    main()
