"""PyTorch peers for shardts' FP8 block-scaled GEMM (issue 6): DeepSeek-V3 scaling (A: 1x128 tiles,
B: 128x128 blocks, f32 dequantization scales, bf16 output) through torch's scaled_mm (cuBLASLt),
bf16 torch.matmul on the same shapes, and for the grouped (MoE) shapes torch._grouped_mm in bf16
and a per-expert scaled_mm loop.

Run by bench/gpu/fp8-gemm.ts with one JSON argument ({"reps", "dense": [{name, M, N, K}],
"grouped": [{name, rows, N, K}]}); prints one JSON line per measurement: {case, impl, ms, tflops}
or {case, impl, error}. An unsupported variant prints its reason instead of crashing.
Timing: CUDA events, median of `reps` after warm-up, input sets rotated (same values, other
buffers) so L2 cannot serve repeats. The scaled_mm output is checked against a float32 matmul of
the dequantized operands before it is timed, so a misread scale layout cannot pass as fast.
"""
import json
import sys

import torch

from timing import median_ms  # bench/peers/timing.py (python puts the script's folder on sys.path)

FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0


def emit(**kw):
    print(json.dumps(kw), flush=True)




def quant_1x128(x):
    """(M, K) -> e4m3 (M, K) and scales (M, K/128) laid out outer-dim-major (stride (1, M))."""
    M, K = x.shape
    t = x.float().view(M, K // 128, 128)
    s = t.abs().amax(-1).clamp(min=1e-12) / E4M3_MAX
    q = (t / s.unsqueeze(-1)).to(FP8).view(M, K)
    return q, s.t().contiguous().t()


def quant_128x128(w):
    """(N, K) -> e4m3 (N, K) and scales (ceil(N/128), K/128) contiguous (N need not be a multiple of 128)."""
    N, K = w.shape
    Np = -(-N // 128) * 128
    wp = torch.nn.functional.pad(w.float(), (0, 0, 0, Np - N))
    t = wp.view(Np // 128, 128, K // 128, 128)
    s = t.abs().amax(dim=(1, 3)).clamp(min=1e-12) / E4M3_MAX
    q = (t / s[:, None, :, None]).to(FP8).view(Np, K)[:N].contiguous()
    return q, s.contiguous()


def dequant(q, s_rows):
    """Dequantized f32 of an activation operand: s_rows (R, K/128) per-row scales expanded over 128 columns."""
    return q.float() * s_rows.repeat_interleave(128, dim=-1)[:, : q.shape[1]]


def scaling_types():
    try:
        from torch.nn.functional import ScalingType
    except ImportError:
        return None
    a = getattr(ScalingType, "BlockWise1x128", None) or getattr(ScalingType, "Blockwise_1x128", None)
    b = getattr(ScalingType, "BlockWise128x128", None) or getattr(ScalingType, "Blockwise_128x128", None)
    return (a, b) if a is not None and b is not None else None


def pad_kblocks(s, kb4, rows_major):
    """Scales with their K-block count padded to kb4 (torch's blockwise checks want a multiple of 4):
    rows_major=True: s is (R, KB) outer-dim-major (stride (1, R)) -> (R, kb4), same layout;
    rows_major=False: s is (NB, KB) contiguous -> (NB, kb4) contiguous. The padding is zeros
    (the K blocks past K do not exist, so nothing reads them as data)."""
    if rows_major:
        R, KB = s.shape
        out = torch.zeros(kb4, R, device=s.device, dtype=s.dtype)
        out[:KB] = s.t()
        return out.t()
    NB, KB = s.shape
    out = torch.zeros(NB, kb4, device=s.device, dtype=s.dtype)
    out[:, :KB] = s
    return out


def scaled_mm_variants(qa, sa, qb, sb):
    """(label, fn(qa, sa, qb, sb)) candidates, most specific first."""
    out = []
    st = scaling_types()
    kb = sa.shape[1]
    kb4 = -(-kb // 4) * 4
    fixes = [("sb.t()", lambda s: s.t()), ("sb.t().contiguous()", lambda s: s.t().contiguous()), ("sb", lambda s: s)]
    if st is not None and hasattr(torch.nn.functional, "scaled_mm"):
        for label, fix in fixes:
            out.append((f"F.scaled_mm blockwise ({label})",
                        lambda a, sa_, b, sb_, fix=fix: torch.nn.functional.scaled_mm(
                            a, b.t(), sa_, st[0], fix(sb_), st[1], output_dtype=torch.bfloat16)))
        if kb4 != kb:
            # K blocks not a multiple of 4: the same call with both scales' K blocks zero-padded
            out.append((f"F.scaled_mm blockwise (scales padded to {kb4} K blocks, sb.t())",
                        lambda a, sa_, b, sb_: torch.nn.functional.scaled_mm(
                            a, b.t(), pad_kblocks(sa_, kb4, True), st[0], pad_kblocks(sb_, kb4, False).t(), st[1],
                            output_dtype=torch.bfloat16)))
            out.append((f"F.scaled_mm blockwise (sb padded to {kb4} K blocks, sb.t())",
                        lambda a, sa_, b, sb_: torch.nn.functional.scaled_mm(
                            a, b.t(), sa_, st[0], pad_kblocks(sb_, kb4, False).t(), st[1], output_dtype=torch.bfloat16)))
    for label, fix in fixes[:2]:
        out.append((f"torch._scaled_mm blockwise ({label})",
                    lambda a, sa_, b, sb_, fix=fix: torch._scaled_mm(a, b.t(), scale_a=sa_, scale_b=fix(sb_), out_dtype=torch.bfloat16)))
    return out


def rowwise_variants():
    """(label, fn) candidates of scaled_mm with 1x128 scaling on both operands (the Wgrad form)."""
    st = scaling_types()
    if st is None or not hasattr(torch.nn.functional, "scaled_mm"):
        return []
    return [(f"F.scaled_mm 1x128 both ({label})",
             lambda a, sa_, b, sb_, fix=fix: torch.nn.functional.scaled_mm(a, b.t(), sa_, st[0], fix(sb_), st[0], output_dtype=torch.bfloat16))
            for label, fix in (("sb.t()", lambda s: s.t()), ("sb.t().contiguous()", lambda s: s.t().contiguous()), ("sb", lambda s: s))]


def pick_scaled_mm(qa, sa, qb, sb, ref, case, variants=None):
    """The first variant (default: the 1x128 x 128x128 ones) that runs and matches the dequantized f32
    product, else None (reasons printed)."""
    variants = scaled_mm_variants(qa, sa, qb, sb) if variants is None else variants
    reasons = [] if variants else ["torch.nn.functional.scaled_mm with BlockWise1x128 is not available"]
    for label, fn in variants:
        try:
            got = fn(qa, sa, qb, sb)[: ref.shape[0]].float()
            rel = ((got - ref).norm() / ref.norm()).item()
            if rel < 1e-2:
                return label, fn, rel
            reasons.append(f"{label}: wrong result (rel err {rel:.2e}: scale layout misread)")
        except Exception as e:  # noqa: BLE001 - report every variant's reason
            reasons.append(f"{label}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    emit(case=case, impl="torch scaled_mm fp8 blockwise", error="no scaled_mm variant works: " + " || ".join(reasons))
    return None


def n_sets(bytes_per_set):
    return max(2, min(8, -(-(160 << 20) // bytes_per_set)))


def dense(c, reps):
    M, N, K, name = c["M"], c["N"], c["K"], c["name"]
    flops = 2 * M * N * K
    g = torch.Generator(device="cuda").manual_seed(7)
    x = torch.randn(M, K, device="cuda", generator=g, dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", generator=g, dtype=torch.bfloat16) * 0.05
    qa, sa = quant_1x128(x)
    rows = min(M, 256)
    if c.get("bRows"):
        # the Wgrad form: B quantized 1x128 along K too (per row and K block)
        qb, sb = quant_1x128(w)
        ref = dequant(qa[:rows], sa[:rows]) @ dequant(qb, sb).t()
        picked = pick_scaled_mm(qa, sa, qb, sb, ref, name, rowwise_variants())
    else:
        qb, sb = quant_128x128(w)
        ref = dequant(qa[:rows], sa[:rows]) @ (qb.float() * sb.repeat_interleave(128, 0).repeat_interleave(128, 1)[:N, :K]).t()
        picked = pick_scaled_mm(qa, sa, qb, sb, ref, name)
    if picked is not None:
        label, fn, rel = picked
        sets = [(qa, sa, qb, sb)] + [(qa.clone(), sa, qb.clone(), sb) for _ in range(n_sets(M * K + N * K) - 1)]
        ms = median_ms(fn, sets, reps)
        emit(case=name, impl=f"torch scaled_mm fp8 blockwise [{label}; rel err vs f32 {rel:.1e}]", ms=ms, tflops=flops / ms / 1e9)
    try:
        sets = [(x, w)] + [(x.clone(), w.clone()) for _ in range(n_sets(2 * (M * K + N * K)) - 1)]
        ms = median_ms(lambda a, b: torch.matmul(a, b.t()), sets, reps)
        emit(case=name, impl="torch bf16 matmul", ms=ms, tflops=flops / ms / 1e9)
    except Exception as e:  # noqa: BLE001
        emit(case=name, impl="torch bf16 matmul", error=f"{type(e).__name__}: {e}")


def grouped(c, reps):
    rows, N, K, name = c["rows"], c["N"], c["K"], c["name"]
    E, total = len(rows), sum(rows)
    flops = 2 * total * N * K
    g = torch.Generator(device="cuda").manual_seed(8)
    x = torch.randn(total, K, device="cuda", generator=g, dtype=torch.bfloat16)
    w = torch.randn(E, N, K, device="cuda", generator=g, dtype=torch.bfloat16) * 0.05
    ends = torch.tensor(rows, device="cuda", dtype=torch.int32).cumsum(0).to(torch.int32)
    try:
        fn = lambda a, b, o: torch._grouped_mm(a, b.transpose(-2, -1), offs=o, out_dtype=torch.bfloat16)  # noqa: E731
        sets = [(x, w, ends)] + [(x.clone(), w.clone(), ends) for _ in range(n_sets(2 * (total * K + E * N * K)) - 1)]
        ms = median_ms(fn, sets, reps)
        emit(case=name, impl="torch._grouped_mm bf16", ms=ms, tflops=flops / ms / 1e9)
    except Exception as e:  # noqa: BLE001
        emit(case=name, impl="torch._grouped_mm bf16", error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    # per-expert scaled_mm loop (what a model without a grouped FP8 kernel does). Each expert's rows
    # are padded with zeros to a multiple of 128, as the grouped kernels' layout pads them (cuBLASLt's
    # blockwise path refuses some unpadded row counts); FLOPs count the routed rows only, as for ours.
    qw, sw = zip(*(quant_128x128(w[e]) for e in range(E)))
    starts = [0]
    for r in rows:
        starts.append(starts[-1] + r)
    segs = []
    for e in range(E):
        if rows[e] == 0:
            continue
        xe = x[starts[e]:starts[e + 1]]
        xe = torch.nn.functional.pad(xe, (0, 0, 0, -(-rows[e] // 128) * 128 - rows[e]))
        qa_e, sa_e = quant_1x128(xe)
        segs.append((e, qa_e, sa_e))
    e0, qa0, sa0 = segs[0]
    ref = dequant(qa0[:128], sa0[:128]) @ (qw[e0].float() * sw[e0].repeat_interleave(128, 0).repeat_interleave(128, 1)[:N, :K]).t()
    picked = pick_scaled_mm(qa0, sa0, qw[e0], sw[e0], ref, name)
    if picked is None:
        return
    label, fn1, _ = picked

    def loop(qw_, sw_):
        for e, a_, s_ in segs:
            fn1(a_, s_, qw_[e], sw_[e])

    sets = [(qw, sw)] + [(tuple(q.clone() for q in qw), sw) for _ in range(n_sets(E * N * K) - 1)]
    ms = median_ms(loop, sets, reps)
    emit(case=name, impl=f"per-expert scaled_mm loop fp8 [{label}; rows padded to 128]", ms=ms, tflops=flops / ms / 1e9)


def main():
    spec = json.loads(sys.argv[1])
    if not torch.cuda.is_available():
        emit(case="*", impl="torch", error="torch.cuda.is_available() is False")
        return
    emit(case="*", impl=f"torch {torch.__version__} on {torch.cuda.get_device_name(0)}", ms=0.0, tflops=0.0)
    for c in spec["dense"]:
        try:
            dense(c, spec["reps"])
        except Exception as e:  # noqa: BLE001 - one failing shape must not hide the others
            emit(case=c["name"], impl="torch dense", error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
        torch.cuda.empty_cache()
    for c in spec["grouped"]:
        try:
            grouped(c, spec["reps"])
        except Exception as e:  # noqa: BLE001
            emit(case=c["name"], impl="torch grouped", error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
