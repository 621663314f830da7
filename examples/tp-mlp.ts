// Tensor-parallel MLP (Megatron style): the first Linear is column-parallel (its ffn dim is sharded
// over tp), the second row-parallel (it contracts that sharded dim), so the product is
// Partial<sum> on tp until it is reduced. Tokens are split over dp.
//   npx shardts run examples/tp-mlp.ts            (mesh dp=2, tp=2; checked against one device)
import { defineModel, randn, dot, silu, add, redistribute, rmsnorm, ones, Shard, Replicate } from "shardts";

export default defineModel({ dp: 2, tp: 2 }, (mesh) => {
  const x = randn(mesh, { tokens: 8, model: 64 }, "f32", { dp: Shard("tokens") }, { seed: 1 });
  const norm = ones(mesh, { model: 64 }, "f32");
  const w1 = randn(mesh, { model: 64, ffn: 256 }, "f32", { tp: Shard("ffn") }, { seed: 2, std: 0.125 });
  const w2 = randn(mesh, { ffn: 256, model: 64 }, "f32", { tp: Shard("ffn") }, { seed: 3, std: 0.0625 });

  const h = silu(dot(rmsnorm(x, norm, "model"), w1, "model")); // (S(tokens), S(ffn))
  const partial = dot(h, w2, "ffn"); //                           (S(tokens), P(sum)): each tp rank holds a partial sum
  // add(partial, x) would not type-check: Partial<sum> meets Replicate on 'tp'
  const y = add(redistribute(partial, { tp: Replicate }), x); //  the all-reduce, asked for explicitly
  return { y };
}, "column- then row-parallel MLP with a residual");
