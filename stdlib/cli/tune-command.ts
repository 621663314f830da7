// `shardts tune-gemm`: the FP8 GEMM autotuner (runtime/cuda/gemm-tune.ts) for given problem shapes on
// this machine's GPU, on random operands; the choices go to the tune cache, from which scaled_dot and
// the MoE experts' FP8 GEMMs take them.
import { UsageError } from "../../compiler/errors.ts";
import { configName, shapeProblem } from "../../compiler/codegen/cuda/gemm/config.ts";
import { GROUPED_M_ALIGN } from "../../compiler/numeric/fp8-gemm.ts";
import { Fp8Gemm, type Fp8GemmProblemShape } from "../../runtime/cuda/fp8-gemm.ts";
import { randomGemmInputs, rotated } from "../../runtime/cuda/gemm-inputs.ts";
import { tuneCacheFile, tuneFp8Gemm, untunedGemmConfig } from "../../runtime/cuda/gemm-tune.ts";
import { cudaAvailable, native } from "../../runtime/cuda/native.ts";
import { parseArgs } from "./args.ts";

export const TUNE_HELP = `usage: shardts tune-gemm MxNxK [MxNxK ...] [--experts E] [--reps N]

Times every generated FP8 GEMM configuration for each problem (M×K e4m3 activations in 1x128 tiles
against an N×K weight in 128x128 blocks, bf16 out) on this machine's Hopper GPU, on random operands
copied often enough to keep L2 cold; re-times the finalists (within 10% of the fastest, and the
default configuration) in four rounds of alternating order; and caches the fastest in the tune cache (fp8-gemm-tune.json beside the
kernel cache, SHARDTS_CACHE_DIR). scaled_dot and the MoE experts' FP8 GEMMs launch the cached choice
for that exact problem on that device, and their default configuration otherwise.

  --experts E   grouped problems (the routed experts): M is the padded rows, a multiple of ${GROUPED_M_ALIGN},
                split evenly over E experts, and B holds E weights of N×K
  --reps N      launches each timing takes the median of (default 20)
`;

/** "4096x7168x2048" → { M, N, K }; anything else is a usage error that says the form. */
export function parseShape(s: string, experts?: number): Fp8GemmProblemShape {
  const m = /^(\d+)x(\d+)x(\d+)$/.exec(s);
  if (!m) throw new UsageError(`tune-gemm: a problem is MxNxK (e.g. 4096x7168x2048), got '${s}'`);
  const [M, N, K] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const why = shapeProblem({ M, N, K });
  if (why) throw new UsageError(`tune-gemm: ${s} does not fit the generated FP8 GEMM kernels: ${why}`);
  if (experts !== undefined && M % GROUPED_M_ALIGN !== 0) throw new UsageError(`tune-gemm: with --experts, M is the padded rows and must be a multiple of ${GROUPED_M_ALIGN}; got ${M}`);
  return { M, N, K, experts };
}

const positiveInt = (v: string | true | undefined, flag: string): number | undefined => {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`--${flag} takes a positive integer, got '${v}'`);
  return n;
};

export function tuneCommand(argv: string[], log: (s: string) => void): number {
  const a = parseArgs(argv, ["experts", "reps"], ["help"]);
  if (a.flags.help) return log(TUNE_HELP), 0;
  if (a.positionals.length === 0) throw new UsageError(`tune-gemm needs at least one problem shape\n\n${TUNE_HELP}`);
  const experts = positiveInt(a.flags.experts, "experts"), reps = positiveInt(a.flags.reps, "reps");
  const shapes = a.positionals.map((s) => parseShape(s, experts));
  const gpu = cudaAvailable();
  if (!gpu.ok) throw new UsageError(`tune-gemm times kernels on a GPU, and there is no usable one: ${gpu.reason}`);
  const addon = native(), g = new Fp8Gemm(addon, addon.streamCreate());
  if (!g.supported) throw new UsageError(`tune-gemm tunes the generated Hopper kernels (sm_90a); this GPU is ${g.device.name} (${g.arch}), which runs the cuBLASLt fallback`);
  for (const s of shapes) {
    const grouped = s.experts !== undefined;
    const allocs: bigint[] = [];
    const alloc = (n: number) => {
      const d = addon.memAlloc(Math.max(n, 256));
      allocs.push(d);
      return d;
    };
    try {
      const { base, bytes } = randomGemmInputs(addon, s, alloc);
      const sets = rotated(addon, base, bytes, alloc);
      const what = `${grouped ? `grouped (${s.experts} experts)` : "dense"} ${s.M}x${s.N}x${s.K}`;
      log(`tuning ${what} on ${g.device.name}: every candidate on ${sets.length} input sets, then the finalists in turns`);
      const t = tuneFp8Gemm(g, s, sets, { force: true, reps, log });
      const tflops = (ms: number) => ((2 * s.M * s.N * s.K) / (ms * 1e9)).toFixed(0);
      const def = configName(untunedGemmConfig(g, s, grouped));
      const defMs = t.entries.find((e) => e.name === def)?.ms;
      log(`picked ${t.best.name}: ${t.best.ms!.toFixed(4)} ms, ${tflops(t.best.ms!)} TFLOP/s${defMs !== undefined ? `; the default ${def} in the same rounds: ${defMs.toFixed(4)} ms, ${tflops(defMs)} TFLOP/s` : ""} (medians of the rounds)`);
      const failed = t.entries.filter((e) => e.error);
      if (failed.length) log(`${failed.length} candidate(s) failed and were passed over: ${failed.map((e) => `${e.name} (${e.error})`).join("; ")}`);
    } finally {
      addon.streamSynchronize(g.stream);
      for (const d of allocs) addon.memFree(d);
    }
  }
  log(`cached in ${tuneCacheFile()}`);
  return 0;
}
