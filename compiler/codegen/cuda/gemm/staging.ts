// The TMA-store epilogue's staging writes, shared by the epilogue (emit.ts) and the chunked loop's
// deferred store (mainloop.ts): a consumer warpgroup's 64 rows of bf16 in 64-column boxes of 64 x 128
// bytes with the 128-byte swizzle (16-byte chunk j of row r sits at chunk j ^ (r % 8)), so the 8 rows a
// warp writes at once hit 8 different chunks and no bank twice.

/**
 * Writes acc's 8-column groups from..to-1 (numbers or C expressions) (acc[4j..4j+3]: rows rr and rr + 8, columns 8j + c0 + {0,1})
 * into the boxes at `mine` (group j in box j / 8; `oneBox`: the buffer holds one box, group j at its j % 8).
 * Names the body defines: mine, rr, lane, acc.
 */
export function stagingWrites(from: number | string, to: number | string, pad: string, oneBox = false, stmatrix?: boolean): string {
  if (stmatrix) return stagingWritesStsm(from, to, pad, oneBox);
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
/** This thread's first row in it (`rr`; the other is rr + 8), which the st.shared writes use (stmatrix's do not). */
export const stagingRow = (pad: string, stmatrix?: boolean): string =>
  stmatrix ? "" : `${pad}const int rr = warp * 16 + lane / 4;  // this thread's rows rr and rr + 8 of the warpgroup's 64\n`;

/**
 * The same writes by stmatrix (Fp8GemmConfig stmatrix; `from` and `to` even): one m8n8.x4 per two 8-column
 * groups j, j + 1 stores four 8 x 8 bf16 matrices — (j, rows rr0..+7), (j, rows +8..+15), (j + 1, ...), (j + 1, ...)
 * of the warp's 16 rows — whose row addresses come from lanes 0-7, 8-15, 16-23 and 24-31, and whose
 * elements are the accumulator fragment as it lies (lane l holds row l / 4, columns 2 (l % 4) + {0, 1} of
 * each): 16 stores a thread for a 64 x 256 tile half instead of 64. Names the body defines: mine, warp,
 * lane, acc.
 */
function stagingWritesStsm(from: number | string, to: number | string, pad: string, oneBox: boolean): string {
  return `#pragma unroll
${pad}for (int j = ${from}; j < ${to}; j += 2) {
${pad}  const int jj = j + lane / 16, row = warp * 16 + ((lane / 8) % 2) * 8 + lane % 8;  // this lane's matrix row
${pad}  sh_stsm_x4(mine + ${oneBox ? "" : "(jj / 8) * 8192 + "}row * 128 + (((jj % 8) ^ (lane % 8)) * 16),
${pad}             sh_pack_bf16x2(acc[4 * j + 0], acc[4 * j + 1]), sh_pack_bf16x2(acc[4 * j + 2], acc[4 * j + 3]),
${pad}             sh_pack_bf16x2(acc[4 * j + 4], acc[4 * j + 5]), sh_pack_bf16x2(acc[4 * j + 6], acc[4 * j + 7]));
${pad}}
`;
}
