// Untyped views of the elementwise ops for library code whose shapes are only known at run time
// (layers built from sizes in a config): the trace-time checks still apply.
import * as ew from "../ops/elementwise.ts";
import { trace } from "../ops/trace.ts";
import type { AnyDTensor } from "../dtensor.ts";

type Arg = AnyDTensor | number;
const bin = (f: unknown) => f as (a: Arg, b: Arg) => AnyDTensor;
const un = (f: unknown) => f as (x: AnyDTensor) => AnyDTensor;

export const add = bin(ew.add), sub = bin(ew.sub), mul = bin(ew.mul), div = bin(ew.div);
export const exp = un(ew.exp), log = un(ew.log), silu = un(ew.silu), sigmoid = un(ew.sigmoid), neg = un(ew.neg);
/** Identity whose gradient is zero. */
export const stop_gradient_ = (x: AnyDTensor): AnyDTensor => trace("stop_gradient", [x])[0]!;
