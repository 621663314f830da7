// Bit-exact numeric emulation used by the CPU reference backend, so that GPU
// results can be compared against it element for element.
export { roundToBf16, bf16ToBits, bf16FromBits, roundArrayToBf16 } from "./bf16.ts";
export {
  E4M3_MAX,
  E5M2_MAX,
  roundToE4M3,
  roundToE5M2,
  e4m3ToBits,
  e4m3FromBits,
  e5m2ToBits,
  e5m2FromBits,
  roundArrayToE4M3,
  roundArrayToE5M2,
} from "./fp8.ts";
export type { Fp8SaturationMode } from "./fp8.ts";
export { philox4x32_10, randUniformAt, randNormalAt, fillRandom } from "./rng.ts";
export type { RandomKind, FillRandomOptions } from "./rng.ts";
