"""Summarises the SM clock and power samples run.sh takes while an entry runs (nvidia-smi, 5 a second):
whether the GPU ran at its power limit, and how far below its top clock that held it.

    python3 bench/gpu/lib/clocks.py OUT/NAME-clocks.csv
    python3 bench/gpu/lib/clocks.py --fields     (the --query-gpu list run.sh samples)

The file has no header; each line is the fields of FIELDS (nvidia-smi --format=csv,noheader,nounits).
The figures are over the samples with the GPU busy (utilization >= BUSY % over the driver's window):
the gaps between kernels and child processes would otherwise pull them towards idle. A bench whose
kernels run in bursts of milliseconds (the GEMM benches: 20 timed runs of ~0.1-1 ms between seconds of
compiling and checking) is seen by few samples, and each reads the clock at one instant; the kernels'
own clock over their run is what bench/gpu/gemm-trace.ts measures (clock64 against %globaltimer).
Prints one line per GPU; exit 0 even with no samples (then it says so), so a bench never fails for
its clock log."""
import statistics
import sys

FIELDS = [
    "index",
    "utilization.gpu",
    "clocks.sm",
    "clocks.max.sm",
    "power.draw",
    "enforced.power.limit",
    "temperature.gpu",
    "clocks_event_reasons.sw_power_cap",
    "clocks_event_reasons.sw_thermal_slowdown",
    "clocks_event_reasons.hw_slowdown",
]
BUSY = 1
REASONS = {"clocks_event_reasons.sw_power_cap": "power cap", "clocks_event_reasons.sw_thermal_slowdown": "thermal", "clocks_event_reasons.hw_slowdown": "hw slowdown"}


def parse(lines):
    """The samples as dicts (field -> str); lines that are not one value per field are skipped."""
    out = []
    for line in lines:
        vals = [v.strip() for v in line.split(",")]
        if len(vals) == len(FIELDS):
            out.append(dict(zip(FIELDS, vals)))
    return out


def num(s):
    try:
        return float(s)
    except ValueError:
        return None


def summary(samples):
    """One line per GPU index over its busy samples."""
    lines = []
    for gpu in sorted({s["index"] for s in samples}):
        busy = [s for s in samples if s["index"] == gpu and (num(s["utilization.gpu"]) or 0) >= BUSY]
        if not busy:
            lines.append(f"clocks gpu {gpu}: no busy samples (utilization >= {BUSY}%)")
            continue
        sm = [v for v in (num(s["clocks.sm"]) for s in busy) if v is not None]
        pw = [v for v in (num(s["power.draw"]) for s in busy) if v is not None]
        top, limit = num(busy[0]["clocks.max.sm"]), num(busy[0]["enforced.power.limit"])
        temp = [v for v in (num(s["temperature.gpu"]) for s in busy) if v is not None]
        reasons = ", ".join(f"{label} {sum(s[f] == 'Active' for s in busy)}" for f, label in REASONS.items())
        lines.append(
            f"clocks gpu {gpu}: {len(busy)} of {sum(s['index'] == gpu for s in samples)} samples busy; SM clock median {statistics.median(sm):.0f} MHz (min {min(sm):.0f}, max {max(sm):.0f}; top {top:.0f})"
            + (f"; power median {statistics.median(pw):.0f} W (max {max(pw):.0f}; limit {limit:.0f})" if pw and limit is not None else "")
            + (f"; temperature max {max(temp):.0f} C" if temp else "")
            + f"; busy samples with the clock held back by: {reasons}"
        )
    return lines or ["clocks: no samples (nvidia-smi missing, or it knows none of the fields)"]


if __name__ == "__main__":
    if sys.argv[1] == "--fields":
        print(",".join(FIELDS))
    else:
        with open(sys.argv[1]) as f:
            print("\n".join(summary(parse(f))))
