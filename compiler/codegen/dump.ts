// Writes every kernel of a CUDA program to a directory (for `--dump-cuda DIR`): one .cu per kernel,
// headed by the kernel instructions it serves and the IR nodes each fuses, and a manifest.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { CudaProgram } from "./cuda/emit.ts";

export function dumpCuda(dir: string, prog: CudaProgram): string[] {
  mkdirSync(dir, { recursive: true });
  const files = prog.kernels.map((k) => {
    const header = [
      `// ${k.instances.length} kernel instruction(s) use this kernel (arch ${k.arch}, sha256 ${k.hash}):`,
      ...k.instances.map((i) => `//   k${i.id}: ${i.fuses.map((f) => `n${f.node} ${f.op}${f.site ? ` (${f.site})` : ""}`).join(", ")}`),
      "",
    ].join("\n");
    const file = join(dir, `${k.name}.cu`);
    writeFileSync(file, header + k.source);
    return file;
  });
  const manifest = prog.kernels.map((k) => ({ name: k.name, file: `${k.name}.cu`, hash: k.hash, arch: k.arch, launch: { ...k.launch, params: k.launch.params.map((p) => p.name) }, instances: k.instances.map((i) => i.id) }));
  const m = join(dir, "kernels.json");
  writeFileSync(m, JSON.stringify({ arch: prog.arch, kernels: manifest }, null, 2) + "\n");
  return [...files, m];
}
