"""PyTorch peer of bench/gpu/moves.ts: the same data movements at the same sizes, timed with events.
- transpose: w.transpose(1, 2).contiguous() of [E][K][N] bf16;
- gather: x.index_select(0, idx) of [R][D] bf16 rows (idx: a permutation with -1s replaced by row 0,
  since index_select has no zero rows).
Timed queued ahead (timing.py), as shardts' kernels are: the events time the kernels, not the launches.
Prints one JSON line per case: {"case", "impl", "ms", "GBps"} (bytes read + written)."""
import json
import sys

import torch

from timing import median_ms


def main():
    E, K, N, R, D = (int(v) for v in sys.argv[1:6])
    dev = torch.device("cuda")
    w = [torch.randn(E, K, N, device=dev, dtype=torch.bfloat16) for _ in range(2)]
    ms = median_ms(lambda t: t.transpose(1, 2).contiguous(), [(t,) for t in w], queue_ahead=True)
    b = 2 * E * K * N * 2
    print(json.dumps({"case": f"transpose [{E}][{K}][{N}] bf16", "impl": "torch transpose(1,2).contiguous()", "ms": ms, "GBps": b / ms / 1e6}))
    x = [torch.randn(R, D, device=dev, dtype=torch.bfloat16) for _ in range(2)]
    idx = torch.randperm(R, device=dev)
    ms = median_ms(lambda t: t.index_select(0, idx), [(t,) for t in x], queue_ahead=True)
    b = 2 * R * D * 2
    print(json.dumps({"case": f"gather {R} rows x {D} bf16", "impl": "torch index_select", "ms": ms, "GBps": b / ms / 1e6}))


if __name__ == "__main__":
    main()
