#!/usr/bin/env python3
"""The daemon's CPU per event, thread by thread, for link-trace binaries
side by side (run as root, from the workspace, after
`cargo build --release -p link-trace -p bench-load`):

    bench-load/measure-daemon-cpu.py OLD_BINARY target/release/link-trace

Each round runs `bench-load --comm bl-measure pairs N` (N = $PAIRS, default
50000) once with no tracer, then once under each binary started as
`BIN --json --comm bl-measure > /dev/null`. Per thread of the tracer it
reads utime+stime (/proc/PID/task/*/stat) and voluntary context switches
(.../status) just before and after the load, and prints the medians over
$ROUNDS rounds (default 3): CPU µs per event (one tick is 10 ms, so a
figure moves in steps of 10 ms / N), switches, and the pair's ns with and
without the tracer. Each pair is one link event and one unlink context
record."""
import os, subprocess, sys, time, signal, statistics

BENCH = os.environ.get("BENCH_LOAD", "target/release/bench-load")
N = int(os.environ.get("PAIRS", "50000"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def threads(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
            status = open(f"/proc/{pid}/task/{tid}/status").read()
        except FileNotFoundError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])
        vol = int(
            [l for l in status.splitlines() if l.startswith("voluntary_ctxt_switches")][0].split()[1]
        )
        key = f"{comm}/{tid}"
        out[key] = (ticks, vol)
    return out


def pairs():
    r = subprocess.run([BENCH, "--comm", "bl-measure", "pairs", str(N)], capture_output=True, text=True, check=True)
    return float(r.stdout.split("ns_per_op=")[1])


def traced(binary, extra):
    p = subprocess.Popen(
        [binary, "--json", "--comm", "bl-measure", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    err = []
    for line in p.stderr:
        err.append(line)
        if "link-trace: tracing" in line:
            break
    time.sleep(0.3)
    before = threads(p.pid)
    ns = pairs()
    time.sleep(0.2)  # let the daemon drain
    after = threads(p.pid)
    p.send_signal(signal.SIGTERM)
    rest = p.stderr.read()
    rc = p.wait()
    summary = [l for l in rest.splitlines() if "events captured" in l or "delivered" in l]
    per = {}
    for key, (t, v) in after.items():
        t0, v0 = before.get(key, (0, 0))
        name = key.split("/")[0]
        a = per.setdefault(name, [0, 0])
        a[0] += t - t0
        a[1] += v - v0
    return ns, per, rc, summary


def main():
    bins = sys.argv[1:]
    extra = os.environ.get("EXTRA", "").split()
    res = {b: {"ns": [], "per": []} for b in bins}
    bare = []
    for r in range(ROUNDS):
        bare.append(pairs())
        for b in bins:
            ns, per, rc, summary = traced(b, extra)
            res[b]["ns"].append(ns)
            res[b]["per"].append(per)
            print(f"round {r} {b}: {ns:.0f} ns/pair rc={rc} {summary}", file=sys.stderr)
    print(f"pairs={N} rounds={ROUNDS}")
    print(f"no tracer: median {statistics.median(bare):.0f} ns/pair ({min(bare):.0f}-{max(bare):.0f})")
    for b in bins:
        ns = res[b]["ns"]
        print(f"\n{b}: median {statistics.median(ns):.0f} ns/pair ({min(ns):.0f}-{max(ns):.0f}), "
              f"ratio {statistics.median(ns)/statistics.median(bare):.3f}")
        names = sorted({n for p in res[b]["per"] for n in p})
        total = []
        for i, p in enumerate(res[b]["per"]):
            total.append(sum(t for t, _ in p.values()) * TICK_US / N)
        for n in names:
            ticks = [p.get(n, [0, 0])[0] for p in res[b]["per"]]
            sw = [p.get(n, [0, 0])[1] for p in res[b]["per"]]
            print(f"  {n:20s} ticks {ticks} switches {sw} µs/event median {statistics.median(ticks)*TICK_US/N:.2f}")
        print(f"  total µs/event per round: {[round(t, 2) for t in total]} median {statistics.median(total):.2f}")


main()
