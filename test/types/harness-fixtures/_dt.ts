// A tiny stand-in for the stdlib's DT so the harness tests depend on nothing but tsc: placements per
// mesh axis, and the intersection trick that turns a mismatch into a `"shardts error"` property.
type Plc = "R" | `S(${string})` | "P(sum)" | "P(max)";
export declare class DT<P extends Record<string, Plc>> {
  declare readonly __p: P;
}
type Pretty<P> = P extends "R" ? "Replicate" : P extends `S(${infer D})` ? `Shard<${D}>` : P extends `P(${infer O})` ? `Partial<${O}>` : never;
type AsCode<P> = P extends "R" ? "Replicate" : P extends `S(${infer D})` ? `Shard("${D}")` : P extends `P(${infer O})` ? `Partial("${O}")` : never;
type Msg<Op extends string, K extends string, X, Y> = X extends `P(${string})`
  ? `mesh axis '${K}': ${Pretty<X>} meets ${Pretty<Y>} in ${Op}(); reduce first: redistribute(a, { ${K}: Replicate })`
  : `mesh axis '${K}': ${Pretty<X>} meets ${Pretty<Y>} in ${Op}(); make them agree: redistribute(b, { ${K}: ${AsCode<X>} })`;
type AxisMsg<Op extends string, A extends Record<string, Plc>, B extends Record<string, Plc>> = {
  [K in keyof A & string]: [A[K]] extends [B[K]] ? ([B[K]] extends [A[K]] ? never : Msg<Op, K, A[K], B[K]>) : Msg<Op, K, A[K], B[K]>;
}[keyof A & string];
// `never` (no mismatch) leaves the parameter type alone; otherwise the argument lacks the property.
type Fail<M> = [M] extends [never] ? unknown : { readonly "shardts error": M };

export declare function add<A extends DT<any>, B extends DT<any>>(a: A, b: B & Fail<AxisMsg<"add", A["__p"], B["__p"]>>): A;

/** Property-position check: the wrong value meets a "⛔ ..." literal type. */
export declare function mesh(spec: { tp: 2 | 4 | 8 | "⛔ mesh axis 'tp' must be a power of two: 2, 4 or 8" }): void;

export declare const rep: DT<{ tp: "R" }>;
export declare const part: DT<{ tp: "P(sum)" }>;
export declare const tok: DT<{ tp: "S(tokens)" }>;
