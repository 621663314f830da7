// The TMA-store epilogue's staging writes, shared by the epilogue (emit.ts) and the chunked loop's
// deferred store (mainloop.ts): a consumer warpgroup's 64 rows of bf16 in 64-column boxes of 64 x 128
// bytes with the 128-byte swizzle (16-byte chunk j of row r sits at chunk j ^ (r % 8)), so the 8 rows a
// warp writes at once hit 8 different chunks and no bank twice.

/**
 * Writes acc's 8-column groups from..to-1 (numbers or C expressions) (acc[4j..4j+3]: rows rr and rr + 8, columns 8j + c0 + {0,1})
 * into the boxes at `mine` (group j in box j / 8; `oneBox`: the buffer holds one box, group j at its j % 8).
 * Names the body defines: mine, rr, lane, acc.
 */
export function stagingWrites(from: number | string, to: number | string, pad: string, oneBox = false): string {
  return `#pragma unroll
${pad}for (int j = ${from}; j < ${to}; ++j) {
${pad}  const sh_u32 at = mine + ${oneBox ? "" : "(j / 8) * 8192 + "}(((j % 8) ^ (rr % 8)) * 16) + 4 * (lane % 4);
${pad}  sh_sts_u32(at + rr * 128, sh_pack_bf16x2(acc[4 * j + 0], acc[4 * j + 1]));
${pad}  sh_sts_u32(at + (rr + 8) * 128, sh_pack_bf16x2(acc[4 * j + 2], acc[4 * j + 3]));
${pad}}
`;
}

/**
 * After the writes: fenced for the async proxy, the warpgroup synchronized, then one thread stores the
 * staged boxes (`stores`: its statements, at `pad` + 2) and commits them as one bulk group.
 */
export const stagingFlush = (stores: string, pad: string): string => `${pad}sh_fence_proxy_async();  // the writes are visible to the TMA engine
${pad}sh_named_bar(1 + wg, 128);
${pad}if (threadIdx.x % 128 == 0) {
${stores}${pad}  sh_bulk_commit();
${pad}}
`;

/** The warpgroup's staging buffer (`mine`) of 64 x `columns` bf16. */
export const stagingBuffer = (columns: number, pad: string): string => `${pad}const sh_u32 mine = staging + wg * ${64 * columns * 2};\n`;
/** This thread's first row in it (`rr`; the other is rr + 8). */
export const stagingRow = (pad: string): string => `${pad}const int rr = warp * 16 + lane / 4;  // this thread's rows rr and rr + 8 of the warpgroup's 64\n`;
