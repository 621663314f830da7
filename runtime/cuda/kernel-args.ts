// Packing kernel arguments into the parameter block that launchKernel hands to cuLaunchKernel.
//
// The block is laid out as the C ABI lays out the kernel's parameters: each argument at the next
// offset that is a multiple of its alignment (its size, for scalars and pointers). No tail padding.
//
//   const params = packArgs(["ptr", y], ["ptr", x], ["f32", 2.5], ["i32", n]);
//   addon.launchKernel(fn, blocks, 256, 0, stream, params);
//
// With the addon's check (CUDA 12.4+ drivers), a block of the wrong total size is refused before launch.

export type KernelArg =
  | ["ptr", bigint]
  | ["i8" | "u8" | "i16" | "u16" | "i32" | "u32", number]
  | ["i64" | "u64", bigint | number]
  | ["f16" | "bf16", number]
  | ["f32" | "f64", number]
  /** A struct passed by value: its bytes and its alignment. */
  | ["bytes", Uint8Array, number];

const SIZE: Record<string, number> = { ptr: 8, i8: 1, u8: 1, i16: 2, u16: 2, i32: 4, u32: 4, i64: 8, u64: 8, f16: 2, bf16: 2, f32: 4, f64: 8 };

/** Rounds a float to bf16 bits (round to nearest even; NaN stays NaN). */
export function f32ToBf16Bits(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer)[0]!;
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x7fffff) !== 0) return (u >>> 16) | 0x40;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

/** Rounds a float to IEEE half bits (round to nearest even). */
export function f32ToF16Bits(x: number): number {
  const f = new Float32Array([x]);
  const u = new Uint32Array(f.buffer)[0]!;
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let r = mant >>> shift;
    const rest = mant & ((1 << shift) - 1);
    if (rest > half || (rest === half && (r & 1))) r++;
    return sign | r;
  }
  let r = mant >>> 13;
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (r & 1))) {
    r++;
    if (r === 0x400) {
      r = 0;
      e++;
      if (e >= 0x1f) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | r;
}

/** Each argument's offset in the packed block, and the block's size. */
export function argOffsets(args: readonly KernelArg[]): { offsets: number[]; size: number } {
  let size = 0;
  const offsets: number[] = [];
  for (const arg of args) {
    const [kind] = arg;
    const bytes = kind === "bytes" ? arg[1].byteLength : SIZE[kind];
    const align = kind === "bytes" ? arg[2] : SIZE[kind];
    if (bytes === undefined || align === undefined) throw new TypeError(`packArgs: unknown argument kind '${String(kind)}'`);
    if (!(align > 0) || (align & (align - 1)) !== 0) throw new RangeError(`packArgs: alignment ${align} is not a power of two`);
    const offset = Math.ceil(size / align) * align;
    offsets.push(offset);
    size = offset + bytes;
  }
  return { offsets, size };
}

export function packArgs(...args: KernelArg[]): Uint8Array {
  const { offsets, size } = argOffsets(args);
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  for (let i = 0; i < args.length; i++) {
    const offset = offsets[i]!, arg = args[i]!;
    switch (arg[0]) {
      case "ptr":
      case "u64":
        view.setBigUint64(offset, BigInt.asUintN(64, BigInt(arg[1])), true);
        break;
      case "i64":
        view.setBigInt64(offset, BigInt.asIntN(64, BigInt(arg[1])), true);
        break;
      case "i8":
        view.setInt8(offset, arg[1]);
        break;
      case "u8":
        view.setUint8(offset, arg[1]);
        break;
      case "i16":
        view.setInt16(offset, arg[1], true);
        break;
      case "u16":
        view.setUint16(offset, arg[1], true);
        break;
      case "i32":
        view.setInt32(offset, arg[1], true);
        break;
      case "u32":
        view.setUint32(offset, arg[1], true);
        break;
      case "f16":
        view.setUint16(offset, f32ToF16Bits(arg[1]), true);
        break;
      case "bf16":
        view.setUint16(offset, f32ToBf16Bits(arg[1]), true);
        break;
      case "f32":
        view.setFloat32(offset, arg[1], true);
        break;
      case "f64":
        view.setFloat64(offset, arg[1], true);
        break;
      case "bytes":
        out.set(arg[1], offset);
        break;
    }
  }
  return out;
}

/**
 * Packs arguments at the offsets the driver gives for the kernel (funcGetParamLayout): needed when a
 * parameter is over-aligned (a 64-byte-aligned CUtensorMap), where the device's block does not start
 * it at the C ABI offset. Each argument's size must match its parameter's.
 */
export function packArgsAt(layout: readonly { offset: number; size: number }[], ...args: KernelArg[]): Uint8Array {
  if (layout.length !== args.length) throw new RangeError(`packArgsAt: the kernel takes ${layout.length} parameters, got ${args.length} arguments`);
  const end = layout.reduce((e, p) => Math.max(e, p.offset + p.size), 0);
  const out = new Uint8Array(end);
  args.forEach((a, i) => {
    const one = packArgs(a);
    const at = layout[i]!;
    if (one.length !== at.size) throw new RangeError(`packArgsAt: argument ${i} (${a[0]}) is ${one.length} bytes; the kernel's parameter ${i} is ${at.size}`);
    out.set(one, at.offset);
  });
  return out;
}
