// Placements that name a dim the tensor lacks, or a mesh axis the mesh lacks.
import { Mesh, Replicate, Shard, randn, zeros, redistribute } from "../../../stdlib/index.ts";

const mesh = Mesh.of({ dp: 2, tp: 2 });

// @expect-error mesh axis 'tp': Shard<ffn> names a dim the tensor does not have; shard one of its dims
export const e1 = randn(mesh, { batch: 8, model: 16 }, "f32", { tp: Shard("ffn") });
export const ok1 = randn(mesh, { batch: 8, model: 16 }, "f32", { tp: Shard("model") });

const x = zeros(mesh, { batch: 8, model: 16 }, "f32", { dp: Shard("batch") });
// @expect-error mesh axis 'dp': Shard<tokens> names a dim the tensor does not have; shard one of its dims
export const e2 = redistribute(x, { dp: Shard("tokens") });
export const ok2 = redistribute(x, { dp: Shard("model") });

// @expect-error mesh has no axis 'ep'; placements may name only the mesh's axes
export const e3 = randn(mesh, { batch: 8, model: 16 }, "f32", { ep: Shard("batch") });
export const ok3 = randn(mesh, { batch: 8, model: 16 }, "f32", { dp: Shard("batch") });

// @expect-error mesh has no axis 'pp'; placements may name only the mesh's axes
export const e4 = redistribute(x, { pp: Replicate });
export const ok4 = redistribute(x, { tp: Replicate });

// @expect-error mesh has no axis 'ep'; placements may name only the mesh's axes
export const e5 = zeros(mesh, { n: 4 }, "i32", { ep: Replicate });
export const ok5 = zeros(mesh, { n: 4 }, "i32", { dp: Replicate });
