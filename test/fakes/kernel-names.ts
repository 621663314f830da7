// A fake native layer's addon wrapped so the kernels launched can be told by name: each launch pushes the
// name its function was looked up by (moduleGetFunction) onto `order`, "?" for a function not looked up.
import type { NativeAddon } from "../../runtime/cuda/native-types.ts";

export function namingLaunches(inner: NativeAddon): { addon: NativeAddon; order: string[] } {
  const names = new Map<unknown, string>(), order: string[] = [];
  const addon = new Proxy(inner, {
    get: (t, k) => {
      const v = Reflect.get(t, k) as (...a: unknown[]) => unknown;
      if (k === "moduleGetFunction") return (mod: unknown, name: string) => { const h = v(mod, name); names.set(h, name); return h; };
      if (k === "launchKernel") return (fn: unknown, ...rest: unknown[]) => (order.push(names.get(fn) ?? "?"), v(fn, ...rest));
      return v;
    },
  }) as NativeAddon;
  return { addon, order };
}
