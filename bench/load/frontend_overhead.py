"""frontend_overhead.py PID GRPC_ADDR HTTP_ADDR KVSIEVE [load flags...]

Front-end CPU per generated token of `kvsieve serve`: the same load through gRPC and the
OpenAI HTTP API, against one server. CPU time (utime+stime, /proc) of the whole process minus
the engine's threads (the two busiest threads: engine loop + its OpenMP worker), divided by
the tokens generated. CPU time, not wall time, so other load on the machine matters less."""
import os, subprocess, sys
pid, grpc_addr, http_addr, binp = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
args = sys.argv[5:]
HZ = os.sysconf("SC_CLK_TCK")
def snap():
    tasks = {}
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            f = open("/proc/%d/task/%s/stat" % (pid, t)).read().rsplit(")", 1)[1].split()
            tasks[t] = int(f[11]) + int(f[12])
        except OSError:
            pass
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    total = int(f[11]) + int(f[12])
    return total, tasks
for rnd in range(int(os.environ.get("ROUNDS", "2"))):
    for api, addr in (("grpc", grpc_addr), ("openai", http_addr)):
        t0, k0 = snap()
        out = subprocess.run([binp, "load", "--api", api, "--target", addr, "-q"] + args,
                             capture_output=True, text=True)
        t1, k1 = snap()
        d = {t: k1[t] - k0.get(t, 0) for t in k1}
        eng = sum(sorted(d.values())[-2:])
        toks = [l for l in out.stdout.splitlines() if l.startswith("throughput")]
        ntok = int(toks[0].split("(")[1].split()[0]) if toks else 0
        front = (t1 - t0) - eng
        lat = [l for l in out.stdout.splitlines() if l.strip().startswith(("TTFT", "TPOT"))]
        print("%-6s round %d: %d tokens, process CPU %.2f s, engine threads %.2f s, front end "
              "%.3f s = %.1f us/token | %s" % (api, rnd, ntok, (t1 - t0) / HZ, eng / HZ,
                                               front / HZ, 1e6 * front / HZ / max(ntok, 1),
                                               " | ".join(" ".join(l.split()[:3]) for l in lat)),
              flush=True)
