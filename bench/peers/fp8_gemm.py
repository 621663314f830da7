"""PyTorch peers for shardts' FP8 block-scaled GEMM (issue 6): DeepSeek-V3 scaling (A: 1x128 tiles,
B: 128x128 blocks, f32 dequantization scales, bf16 output) through torch's scaled_mm (cuBLASLt),
bf16 torch.matmul on the same shapes, and for the grouped (MoE) shapes torch._grouped_mm in bf16
and a per-expert scaled_mm loop.

Run by bench/gpu/fp8-gemm.ts with one JSON argument ({"reps", "dense": [{name, M, N, K}],
"grouped": [{name, rows, N, K}]}); prints one JSON line per measurement: {case, impl, ms, tflops}
or {case, impl, error}. bench/gpu/bf16-gemm.ts adds "kgrouped": [{name, rows, M, N}], the MoE weight
gradient dW[e] = x_e^T dy_e in bf16, timed as torch._grouped_mm's 2-D x 2-D (jagged K) form. An unsupported variant prints its reason instead of crashing.
Timing: CUDA events, median of `reps` after warm-up, input sets rotated (same values, other
buffers) so L2 cannot serve repeats. The single calls (scaled_mm, matmul, _grouped_mm) are queued
ahead behind a spin kernel, so each event pair times the kernel and not Python's launch of it (as
shardts' kernels are timed); the per-expert loops are timed call by call, their launches included. The scaled_mm output is checked against a float32 matmul of
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
        ms = median_ms(fn, sets, reps, queue_ahead=True)
        emit(case=name, impl=f"torch scaled_mm fp8 blockwise [{label}; rel err vs f32 {rel:.1e}]", ms=ms, tflops=flops / ms / 1e9)
    try:
        sets = [(x, w)] + [(x.clone(), w.clone()) for _ in range(n_sets(2 * (M * K + N * K)) - 1)]
        ms = median_ms(lambda a, b: torch.matmul(a, b.t()), sets, reps, queue_ahead=True)
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
        ms = median_ms(fn, sets, reps, queue_ahead=True)
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
    ms = median_ms(loop, sets, reps)  # an eager loop: its launches are its cost, timed synchronized
    emit(case=name, impl=f"per-expert scaled_mm loop fp8 [{label}; rows padded to 128]", ms=ms, tflops=flops / ms / 1e9)


def kgrouped(c, reps):
    """dW[e] = x_e^T dy_e (x [rows][M], dy [rows][N], bf16, f32 accumulation) for every expert, as
    torch._grouped_mm's 2-D x 2-D form with offs splitting K (the tokens), which is what torch's grouped_mm
    backward computes for the weights: (a) on x.t() and dy as a model holds them, offs the routed rows'
    ends; (b) on the K-major operands bench/gpu/bf16-gemm.ts gives shardts' K-grouped kernel (x^T and dy^T
    with each expert's columns zero-padded to 64), offs the padded ends. Each is checked against an f32
    matmul on three experts (the largest, an empty one, the last) before it is timed. If neither runs, a
    per-expert torch.matmul loop (the impl label says so). Impl labels start with "kg " (the bench's
    summary takes the fastest)."""
    rows, M, N, name = c["rows"], c["M"], c["N"], c["name"]
    E, total = len(rows), sum(rows)
    flops = 2 * M * N * total
    g = torch.Generator(device="cuda").manual_seed(9)
    x = torch.randn(total, M, device="cuda", generator=g, dtype=torch.bfloat16)
    dy = torch.randn(total, N, device="cuda", generator=g, dtype=torch.bfloat16)
    ends = torch.tensor(rows, device="cuda", dtype=torch.int32).cumsum(0).to(torch.int32)
    starts = [0]
    for r in rows:
        starts.append(starts[-1] + r)
    # the K-major, padded operands (shardts' layout)
    padded = [-(-r // 64) * 64 for r in rows]
    pstarts = [0]
    for r in padded:
        pstarts.append(pstarts[-1] + r)
    xT = torch.zeros(M, pstarts[-1], device="cuda", dtype=torch.bfloat16)
    dyT = torch.zeros(N, pstarts[-1], device="cuda", dtype=torch.bfloat16)
    for e in range(E):
        xT[:, pstarts[e]:pstarts[e] + rows[e]] = x[starts[e]:starts[e + 1]].t()
        dyT[:, pstarts[e]:pstarts[e] + rows[e]] = dy[starts[e]:starts[e + 1]].t()
    pends = torch.tensor(pstarts[1:], device="cuda", dtype=torch.int32)
    # the largest expert and the last non-empty one (an empty expert's block is checked for zeros below)
    check = sorted({max(range(E), key=lambda e: rows[e]), max(e for e in range(E) if rows[e])})
    empty = rows.index(0) if 0 in rows else None

    def wrong(out):
        """(None if out matches the f32 reference on the checked experts, else why not; a note where an
        empty expert's block is not zeros, which a caller would have to fill: timed all the same)."""
        if tuple(out.shape) != (E, M, N):
            return f"output shape {tuple(out.shape)}, expected {(E, M, N)}", ""
        for e in check:
            ref = x[starts[e]:starts[e + 1]].float().t() @ dy[starts[e]:starts[e + 1]].float()
            err = ((out[e].float() - ref).norm() / ref.norm()).item()
            if not err < 1e-2:
                return f"expert {e} ({rows[e]} rows): rel err {err:.2e}", ""
        if empty is not None and not bool((out[empty] == 0).all()):
            return None, f" [empty expert {empty}'s block not zeroed]"
        return None, ""

    forms = [
        ("kg torch._grouped_mm(x.t(), dy, offs) [2-D x 2-D, the MoE wgrad call]", (x, dy, ends),
         lambda a, b, o: torch._grouped_mm(a.t(), b, offs=o, out_dtype=torch.bfloat16)),
        ("kg torch._grouped_mm(xT, dyT.t(), offs) [2-D x 2-D, shardts' padded K-major operands]", (xT, dyT, pends),
         lambda a, b, o: torch._grouped_mm(a, b.t(), offs=o, out_dtype=torch.bfloat16)),
    ]
    ran, reasons = False, []
    for label, args, fn in forms:
        try:
            why, note = wrong(fn(*args))
            if why:
                reasons.append(f"{label}: wrong result ({why})")
                emit(case=name, impl=label, error=f"wrong result: {why}")
                continue
            a, b, o = args
            sets = [args] + [(a.clone(), b.clone(), o) for _ in range(n_sets(2 * (a.numel() + b.numel())) - 1)]
            ms = median_ms(fn, sets, reps, queue_ahead=True)
            emit(case=name, impl=label + note, ms=ms, tflops=flops / ms / 1e9)
            ran = True
        except Exception as e:  # noqa: BLE001 - report the reason, try the next form
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            reasons.append(f"{label}: {reason}")
            emit(case=name, impl=label, error=reason)
        torch.cuda.empty_cache()
    if ran:
        return
    # neither form ran: one matmul per expert (empty experts' blocks zeroed)
    out = torch.empty(E, M, N, device="cuda", dtype=torch.bfloat16)

    def loop(a, b):
        for e in range(E):
            if rows[e]:
                torch.matmul(a[starts[e]:starts[e + 1]].t(), b[starts[e]:starts[e + 1]], out=out[e])
            else:
                out[e].zero_()

    loop(x, dy)
    why, _ = wrong(out)
    label = "kg per-expert torch.matmul loop (torch._grouped_mm refused: " + " || ".join(reasons)[:400] + ")"
    if why:
        emit(case=name, impl=label, error=f"wrong result: {why}")
        return
    sets = [(x, dy)] + [(x.clone(), dy.clone()) for _ in range(n_sets(2 * (x.numel() + dy.numel())) - 1)]
    ms = median_ms(loop, sets, reps)  # an eager loop: its launches are its cost, timed synchronized
    emit(case=name, impl=label, ms=ms, tflops=flops / ms / 1e9)


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
    for c in spec.get("kgrouped", []):
        try:
            kgrouped(c, spec["reps"])
        except Exception as e:  # noqa: BLE001
            emit(case=c["name"], impl="kg torch", error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
