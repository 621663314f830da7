#!/usr/bin/env node
// The `shardts` command. Model files and the package are TypeScript, loaded through tsx.
import { register } from "tsx/esm/api";

register();
const { main } = await import("../stdlib/cli/main.ts");
process.exitCode = await main(process.argv.slice(2));
