// Gradients in user code: grad(loss, { w1, w2 }) appends the backward computation to the trace and
// returns each gradient in its parameter's placements (a Shard parameter gets a Shard gradient).
import { appendGradients } from "../compiler/autodiff/grad.ts";
import { UsageError } from "../compiler/errors.ts";
import { DTensor, type AnyDTensor } from "./dtensor.ts";

export type Grads<W extends Record<string, AnyDTensor>> = { [K in keyof W]: W[K] };

export function grad<W extends Record<string, AnyDTensor>>(loss: AnyDTensor, wrt: W): Grads<W> {
  if (!(loss instanceof DTensor)) throw new UsageError("grad(): loss must be a DTensor");
  const names = Object.keys(wrt);
  for (const n of names) {
    if (!(wrt[n] instanceof DTensor)) throw new UsageError(`grad(): '${n}' is not a DTensor`);
    if (wrt[n]!.mesh !== loss.mesh) throw new UsageError(`grad(): '${n}' belongs to another mesh than the loss`);
  }
  const refs = appendGradients(loss.mesh.builder, loss.ref, names.map((n) => wrt[n]!.ref));
  return Object.fromEntries(names.map((n, i) => [n, new DTensor(loss.mesh, refs[i]!)])) as Grads<W>;
}

export function valueAndGrad<W extends Record<string, AnyDTensor>>(loss: AnyDTensor, wrt: W): { value: AnyDTensor; grads: Grads<W> } {
  return { value: loss, grads: grad(loss, wrt) };
}
