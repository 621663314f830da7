"""Timing shared by the PyTorch peers: CUDA events around each call after warm-up, the median of
`reps`, the inputs rotated among several sets so that repeats are not served from L2."""
import statistics

import torch


# SM clocks the stream is held for before a queued-ahead loop: ~10 ms at H200 clocks, more than
# Python takes to enqueue a loop of a few dozen calls.
QUEUE_AHEAD_CYCLES = 20_000_000


def median_ms(fn, inputs, reps=30, warmup=5, queue_ahead=False):
    """Median milliseconds of fn(*inputs[i % len(inputs)]) over `reps` calls, each timed with events.

    queue_ahead=False: each call waits for the one before (synchronized), so the time includes the
    host's launch of it (what an eager multi-kernel step costs when nothing else is queued).
    queue_ahead=True: a spin kernel (torch.cuda._sleep) holds the stream while every call is
    enqueued, so the GPU runs them back to back and each event pair times the kernels alone, as
    runtime/cuda/gemm-tune.ts timeMedian times shardts' GEMMs; for single-kernel peers (the GEMMs),
    whose Python launch (~35 us for a blockwise scaled_mm) would otherwise count against them."""
    for i in range(warmup):
        fn(*inputs[i % len(inputs)])
    torch.cuda.synchronize()
    if queue_ahead:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        torch.cuda._sleep(QUEUE_AHEAD_CYCLES)
        for i in range(reps):
            starts[i].record()
            fn(*inputs[i % len(inputs)])
            ends[i].record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))
    times = []
    for i in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        args = inputs[i % len(inputs)]
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
