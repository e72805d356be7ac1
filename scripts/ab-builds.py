#!/usr/bin/env python3
"""Before/after comparison of two whole Shardwise builds, one process per run, runs interleaved in alternating
order: the main job (`Shardwise.Bench main`, four shapes, 1/2/4 ranks: its median ms per case) and the 2-process TCP
collective bandwidth report (the multi-process worker under the launcher: time per size); printed: the median of
the per-round new/old time ratios with min and max (docs/testing.md, "Comparing two builds").
usage: scripts/ab-builds.py OLD NEW ROUNDS [gemm,coll]
OLD and NEW each hold bench/ (a copy of bench/bin/Release/net10.0) and tests/ (a copy of tests/bin/Release/net10.0)."""
import os, re, statistics, subprocess, sys
old, new, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
gemm_args = ["main", "--shape", "512x1024x1024", "--shape", "256x1024x1030", "--shape", "1x4096x4096",
             "--shape", "128x256x256", "--ranks", "1,2,4", "--budget-ms", "150"]
row = re.compile(r"^\|\s*(\d+×\d+×\d+)\s*\|\s*(GEMM|\d+)\s*\|[^|]*\|\s*([\d.]+)\s*\|")
bwrow = re.compile(r"^\s+(\d+)\s+(\d+)\s+\w+\s+\w+\s+([\d.]+)\s")
def gemm(d):
    out = subprocess.run(["dotnet", f"{d}/bench/Shardwise.Bench.dll", *gemm_args], capture_output=True, text=True, timeout=600).stdout
    res = {}
    for l in out.splitlines():
        m = row.match(l)
        if m: res[("gemm", m[1], m[2])] = float(m[3])
    return res
def coll(d):
    env = dict(os.environ, SW_BW_MAX_BYTES="8M", SW_BW_MIN_BYTES="8", SW_BW_ITERS="20", SW_BW_WARMUP="5")
    out = subprocess.run(["dotnet", f"{d}/tests/launcher/shardwise.dll", "launch", "-n", "2", "--no-prefix", "--",
                          "dotnet", f"{d}/tests/Shardwise.MultiProcessWorker.dll", "bandwidth"],
                         capture_output=True, text=True, timeout=600, env=env).stdout
    res, kind = {}, None
    for l in out.splitlines():
        m = re.match(r"# collective: (\w+)", l)
        if m: kind = m[1]
        m = bwrow.match(l)
        if m and kind: res[(kind, m[1] + " B", "2")] = float(m[3])
    return res
ratios = {}
BENCHES = [b for b in (gemm, coll) if b.__name__ in (sys.argv[4].split(",") if len(sys.argv) > 4 else ["gemm", "coll"])]
for r in range(rounds):
    for bench in BENCHES:
        order = [(old, "old"), (new, "new")] if r % 2 == 0 else [(new, "new"), (old, "old")]
        got = {tag: bench(d) for d, tag in order}
        for k, v in got["new"].items():
            if k in got["old"] and got["old"][k] > 0:
                ratios.setdefault(k, []).append(v / got["old"][k])
    print(f"round {r+1}/{rounds} done", file=sys.stderr, flush=True)
print(f"new/old time ratio, median of {rounds} interleaved rounds (order alternating); <1 = new faster")
print(f"| what | case | ranks | median ratio | min | max |")
print(f"| --- | --- | ---: | ---: | ---: | ---: |")
for k in sorted(ratios):
    v = ratios[k]
    print(f"| {k[0]} | {k[1]} | {k[2]} | {statistics.median(v):.3f} | {min(v):.3f} | {max(v):.3f} |")
allr = [statistics.median(v) for k, v in ratios.items() if k[0] == "gemm"] or [float("nan")]
print(f"gemm: median over cases {statistics.median(allr):.3f}")
allc = [statistics.median(v) for k, v in ratios.items() if k[0] != "gemm"] or [float("nan")]
print(f"collectives: median over cases {statistics.median(allc):.3f}")
