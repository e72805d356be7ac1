#!/usr/bin/env python3
"""Before/after comparison of two libshardwise builds in ONE process through the C ABI (ctypes; each library is
loaded RTLD_LOCAL from its own path, with its own devices, streams and buffers): sw_gemm at five shapes and the
in-process all-reduce / all-gather / reduce-scatter of 2 ranks at three sizes, CPU backend. Per round each variant
runs a fixed number of calls, in alternating order; printed: the median of the per-round new/old time ratios with
its 10th and 90th percentiles (docs/testing.md, "Comparing two builds").
usage: scripts/ab-native.py OLD/libshardwise.so NEW/libshardwise.so ROUNDS [CASE-SUBSTRING]
(copy each build's lib/ folder somewhere first: the two must be different files)"""
import ctypes as C, os, random, statistics, sys, time
old_path, new_path, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
only = sys.argv[4] if len(sys.argv) > 4 else ""
F32 = 0
class Lib:
    def __init__(self, path):
        self.L = C.CDLL(path, mode=os.RTLD_LOCAL | os.RTLD_NOW)
        self.L.sw_last_error.restype = C.c_char_p
        self.dev = self.h(); self.ck(self.L.sw_device_create(0, 0, 0, C.byref(self.dev)))
        self.dev2 = self.h(); self.ck(self.L.sw_device_create(0, 0, 1, C.byref(self.dev2)))
        self.s = self.h(); self.ck(self.L.sw_stream_create(self.dev, C.byref(self.s)))
    def h(self): return C.c_void_p()
    def ck(self, st):
        if st: raise RuntimeError(self.L.sw_last_error().decode())
    def buf(self, dev, n):
        b = self.h(); self.ck(self.L.sw_buffer_alloc(dev, C.c_uint64(n * 4), C.byref(b)))
        p = C.c_void_p(); self.ck(self.L.sw_buffer_get_pointer(b, C.byref(p)))
        arr = (C.c_float * n).from_address(p.value)
        for i in range(0, n, max(1, n // 4096)): arr[i] = random.uniform(-1, 1)
        return b
    def gemm_case(self, m, k, n):
        a, b, c = self.buf(self.dev, m * k), self.buf(self.dev, k * n), self.buf(self.dev, m * n)
        L, s = self.L, self.s
        def run(reps):
            for _ in range(reps):
                self.ck(L.sw_gemm(s, F32, 0, 0, C.c_int64(m), C.c_int64(n), C.c_int64(k), C.c_float(1.0), a, C.c_uint64(0),
                                  C.c_int64(k), b, C.c_uint64(0), C.c_int64(n), C.c_float(0.0), c, C.c_uint64(0), C.c_int64(n),
                                  None, C.c_uint64(0), 0))
            self.ck(L.sw_stream_synchronize(s))
        return run
    def coll_case(self, op, count):
        L = self.L
        devs = (C.c_void_p * 2)(self.dev2, self.dev2)
        comm = self.h(); self.ck(L.sw_comm_create_local(2, devs, C.c_int64(0), C.byref(comm)))
        streams = [self.h(), self.h()]
        for st in streams: self.ck(L.sw_stream_create(self.dev2, C.byref(st)))
        sends = [self.buf(self.dev2, count * 2) for _ in range(2)]
        recvs = [self.buf(self.dev2, count * 2) for _ in range(2)]
        def run(reps):
            for _ in range(reps):
                for r in range(2):
                    if op == "all_reduce":
                        self.ck(L.sw_all_reduce(comm, r, sends[r], C.c_uint64(0), recvs[r], C.c_uint64(0), C.c_uint64(count), F32, 0, streams[r]))
                    elif op == "all_gather":
                        self.ck(L.sw_all_gather(comm, r, sends[r], C.c_uint64(0), recvs[r], C.c_uint64(0), C.c_uint64(count), F32, streams[r]))
                    else:
                        self.ck(L.sw_reduce_scatter(comm, r, sends[r], C.c_uint64(0), recvs[r], C.c_uint64(0), C.c_uint64(count), F32, 0, streams[r]))
            for st in streams: self.ck(L.sw_stream_synchronize(st))
        return run
libs = {"old": Lib(old_path), "new": Lib(new_path)}
cases = []
for (m, k, n, reps) in [(1, 64, 64, 400), (32, 256, 256, 100), (128, 512, 512, 12), (512, 1024, 1024, 2), (1, 4096, 4096, 6)]:
    cases.append((f"sw_gemm {m}x{k}x{n}", reps, {t: l.gemm_case(m, k, n) for t, l in libs.items()}))
for op in ("all_reduce", "all_gather", "reduce_scatter"):
    for count, reps in [(1, 300), (4096, 200), (262144, 20)]:
        cases.append((f"in-process {op} 2 ranks, {count} floats", reps, {t: l.coll_case(op, count) for t, l in libs.items()}))
print(f"new/old time ratio per round ({rounds} rounds, order rotating, both libraries in one process); <1 = new faster")
print("| case | calls/round | median ratio | p10 | p90 | old median µs/call |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
allr = {}
for name, reps, run in [c for c in cases if only in c[0]]:
    for f in run.values(): f(max(1, reps // 4))  # warm-up
    ratios, olds = [], []
    for r in range(rounds):
        order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
        t = {}
        for tag in order:
            t0 = time.perf_counter(); run[tag](reps); t[tag] = time.perf_counter() - t0
        ratios.append(t["new"] / t["old"]); olds.append(t["old"] / reps * 1e6)
    ratios.sort(); q = lambda p: ratios[min(len(ratios) - 1, int(p * len(ratios)))]
    allr[name] = statistics.median(ratios)
    print(f"| {name} | {reps} | {statistics.median(ratios):.3f} | {q(0.1):.3f} | {q(0.9):.3f} | {statistics.median(olds):.1f} |", flush=True)
g = [v for k, v in allr.items() if k.startswith("sw_gemm")]; c = [v for k, v in allr.items() if not k.startswith("sw_gemm")]
print(f"median over GEMM cases {statistics.median(g) if g else float('nan'):.3f}; over collective cases {statistics.median(c) if c else float('nan'):.3f}")
