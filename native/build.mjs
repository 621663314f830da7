#!/usr/bin/env node
// Builds the native addon (native/build/Release/shardts_native.node) with cmake-js.
//
//   node native/build.mjs            the `install` script: never fails the install. If the build
//                                    fails, it prints one line saying the CUDA backend is unavailable
//                                    and why, and exits 0 (the CPU backend needs no addon).
//   node native/build.mjs --strict   `npm run build:native`: same build, exits 1 when it fails.
//
// Offline by construction: native/package.json declares binary.napi_versions, so cmake-js builds a
// Node-API addon against the node-api-headers and node-addon-api packages from node_modules and never
// downloads Node's headers; the addon includes no CUDA header and links no CUDA library (it dlopens
// them at run time). The full log goes to native/build/build.log and the outcome to
// native/build/build-status.json, which runtime/cuda/native.ts quotes when the addon is missing.
// SHARDTS_SKIP_NATIVE=1 skips the build.
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { availableParallelism } from "node:os";
import { delimiter, dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const buildDir = join(here, "build");
const logPath = join(buildDir, "build.log");
const statusPath = join(buildDir, "build-status.json");
const addonPath = join(buildDir, "Release", "shardts_native.node");
const strict = process.argv.includes("--strict");
const rel = (p) => relative(process.cwd(), p) || p;

function finish(ok, reason, log = "") {
  mkdirSync(buildDir, { recursive: true });
  if (log) writeFileSync(logPath, log);
  writeFileSync(statusPath, JSON.stringify({ ok, reason, log: ok || !log ? null : logPath, when: new Date().toISOString() }, null, 2) + "\n");
  if (ok) {
    console.log(`shardts: native addon built: ${rel(addonPath)} (CUDA libraries are loaded at run time)`);
    process.exit(0);
  }
  console.log(`shardts: CUDA backend unavailable: the native addon was not built (${reason})${log ? `; log: ${rel(logPath)}` : ""}; the CPU backend works without it.`);
  process.exit(strict ? 1 : 0);
}

function onPath(cmd) {
  return (process.env.PATH ?? "").split(delimiter).some((d) => d && existsSync(join(d, cmd)));
}

// The first line of a failed build's output that says what went wrong (cmake-js's own progress
// lines and its closing "Process terminated" say nothing about the cause, so they are skipped).
function firstCause(text) {
  const noise = /^(\$ |INFO |ERROR OMG Process terminated|\s|\[|\]|'|ninja: build stopped)/;
  const lines = text.split("\n").filter((l) => l.trim() && !noise.test(l));
  const patterns = [
    /CMake executable is not found/,
    /No CMAKE_CXX_COMPILER could be found/,
    /fatal error:/,
    /\berror:/,
    /CMake Error/,
    /ERR!|ERROR|Error/,
  ];
  for (const p of patterns) {
    const hit = lines.find((l) => p.test(l));
    if (hit) return hit.trim().slice(0, 240);
  }
  return (lines.pop() ?? "the build printed nothing").trim().slice(0, 240);
}

if (process.env.SHARDTS_SKIP_NATIVE === "1") finish(false, "SHARDTS_SKIP_NATIVE=1 was set");
if (process.platform !== "linux" || process.arch !== "x64") finish(false, `CUDA support is built for linux-x64 only, this is ${process.platform}-${process.arch}`);
if (!onPath("cmake")) finish(false, "cmake is not installed (apt-get install cmake, or pip install cmake)");
if (!onPath("c++") && !onPath("g++") && !onPath("clang++") && !process.env.CXX) finish(false, "no C++ compiler found (apt-get install g++)");

let cmakeJs;
try {
  cmakeJs = join(dirname(createRequire(import.meta.url).resolve("cmake-js/package.json")), "bin", "cmake-js");
} catch (e) {
  finish(false, `cmake-js is not installed (${e.message.split("\n")[0]})`);
}

// A build folder copied from another checkout keeps a CMake cache bound to that folder: cmake then
// refuses it, yet cmake-js can exit 0 with the old addon still in place. Such a folder is cleared,
// and the addon is removed before every build, so "built" always means this build made it.
const cache = join(buildDir, "CMakeCache.txt");
const home = existsSync(cache) ? /^CMAKE_HOME_DIRECTORY:INTERNAL=(.*)$/m.exec(readFileSync(cache, "utf8"))?.[1] : undefined;
if (home !== undefined && home !== here) rmSync(buildDir, { recursive: true, force: true });
rmSync(addonPath, { force: true });

const args = [cmakeJs, "compile", "--directory", here, "--out", buildDir, "--parallel", String(Math.max(1, availableParallelism()))];
const run = spawnSync(process.execPath, args, { encoding: "utf8", maxBuffer: 64 * 1024 * 1024, env: { ...process.env } });
const log = `$ ${[process.execPath, ...args].join(" ")}\n${run.stdout ?? ""}${run.stderr ?? ""}${run.error ? `\n${run.error.message}\n` : ""}`;
if (run.status === 0 && existsSync(addonPath)) finish(true, "", log);
finish(false, run.error ? run.error.message : firstCause(log), log);
