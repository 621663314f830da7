"""Timing shared by the PyTorch peers: CUDA events around each call after warm-up, the median of
`reps`, the inputs rotated among several sets so that repeats are not served from L2."""
import statistics

import torch


def median_ms(fn, inputs, reps=30, warmup=5):
    """Median milliseconds of fn(*inputs[i % len(inputs)]) over `reps` calls, each timed with events."""
    for i in range(warmup):
        fn(*inputs[i % len(inputs)])
    torch.cuda.synchronize()
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
