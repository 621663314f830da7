// The shardts command line, bundled for a GPU machine (no Node packages, no TypeScript loader there):
// the examples are compiled into the bundle and registered by path, so
//   /tmp/node .gpu/shardts-cli.mjs run examples/moe-layer.ts --backend cuda
// is `npx shardts run examples/moe-layer.ts --backend cuda`.
import { fileURLToPath } from "node:url";
import { main } from "../../stdlib/cli/main.ts";
import { registerRunnable } from "../../stdlib/cli/run-command.ts";
import moeLayer from "../../examples/moe-layer.ts";
import tpMlp from "../../examples/tp-mlp.ts";
import trainMoeLm from "../../examples/train-moe-lm.ts";
import distCollectives from "./lib/dist-collectives.ts";
import distFault from "./lib/dist-fault.ts";
import distMoeDispatch from "./lib/dist-moe-dispatch.ts";
import distCheckpoint from "./lib/dist-checkpoint.ts";
import distMoeLayer from "./lib/dist-moe-layer.ts";

registerRunnable("examples/moe-layer.ts", moeLayer);
registerRunnable("examples/tp-mlp.ts", tpMlp);
registerRunnable("examples/train-moe-lm.ts", trainMoeLm);
registerRunnable("bench/gpu/lib/dist-collectives.ts", distCollectives);
registerRunnable("bench/gpu/lib/dist-fault.ts", distFault);
registerRunnable("bench/gpu/lib/dist-moe-dispatch.ts", distMoeDispatch);
registerRunnable("bench/gpu/lib/dist-checkpoint.ts", distCheckpoint);
registerRunnable("bench/gpu/lib/dist-moe-layer.ts", distMoeLayer);
// `launch` starts each rank as this bundle (there is no bin/shardts.mjs or TypeScript loader there)
process.env.SHARDTS_CLI ??= fileURLToPath(import.meta.url);
// run.sh passes --out DIR to every bundle; the CLI takes its own arguments
const argv = process.argv.slice(2);
const out = argv.indexOf("--out");
if (out >= 0) argv.splice(out, 2);
process.exitCode = await main(argv.length ? argv : ["run", "examples/moe-layer.ts", "--backend", "cuda"]);
