#!/usr/bin/env python3
"""Reads one rank file of a shardts checkpoint outside shardts and checks it against metadata.json.

  python3 bench/peers/read_safetensors.py CKPT_DIR [--rank R] [--json OUT]

CKPT_DIR is a checkpoint (holding metadata.json) or a directory whose `latest` names one. The rank
file is opened with the `safetensors` package when it is importable (safe_open, framework "pt" when
torch is there, else "numpy"); else with torch, reading the safetensors header (8-byte little-endian
length, JSON) and each tensor's bytes by the format's documented layout, torch.frombuffer decoding
them; else with the standard library alone (header and raw bytes, no decoding). It prints which.
For every piece metadata.json places in this file: the header's dtype, shape and byte range equal
metadata.json's; the tensor's bytes as the reader returns them hash (SHA-256 per chunk_bytes chunk)
to metadata.json's checksums; float values are all finite. Exit status 0 when every check passes.
"""
import argparse
import hashlib
import json
import math
import os
import struct
import sys

ST_DTYPE = {"f32": "F32", "bf16": "BF16", "fp8e4m3": "F8_E4M3", "fp8e5m2": "F8_E5M2", "i32": "I32"}


def resolve(path):
    if os.path.exists(os.path.join(path, "metadata.json")):
        return path
    with open(os.path.join(path, "latest")) as f:
        return os.path.join(path, f.read().strip())


def read_metadata(ckpt):
    raw = open(os.path.join(ckpt, "metadata.json"), "rb").read()
    prefix, mid = b'{"sha256": "', b'", "metadata": '
    assert raw.startswith(prefix), "metadata.json does not start with its sha256"
    hexd = raw[len(prefix):len(prefix) + 64].decode()
    body = raw[len(prefix) + 64 + len(mid):-2]  # the body ends before "}\n"
    ok = hashlib.sha256(body).hexdigest() == hexd
    return json.loads(body), ok


def header_of(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), n


def reader():
    """The tensor reader: (name, open_fn) where open_fn(path) gives key -> contiguous bytes."""
    try:
        import torch  # noqa: F401
        have_torch = True
    except Exception:
        have_torch = False
    try:
        from safetensors import safe_open
        fw = "pt" if have_torch else "numpy"

        def open_st(path):
            f = safe_open(path, framework=fw)
            def get(key):
                t = f.get_tensor(key)
                if fw == "pt":
                    return t.contiguous().reshape(-1).view(__import__("torch").uint8).numpy().tobytes()
                return t.tobytes()
            return get
        import safetensors
        return f"safetensors {safetensors.__version__} (framework {fw})", open_st
    except Exception:
        pass
    if have_torch:
        import torch
        tdt = {"F32": torch.float32, "BF16": torch.bfloat16, "I32": torch.int32,
               "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None)}

        def open_torch(path):
            header, n = header_of(path)
            data = open(path, "rb").read()

            def get(key):
                e = header[key]
                a, b = e["data_offsets"]
                t = torch.frombuffer(bytearray(data[8 + n + a:8 + n + b]), dtype=tdt[e["dtype"]]).reshape(e["shape"])
                return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            return get
        return f"torch {torch.__version__} (header and bytes by the safetensors layout; safetensors not importable)", open_torch

    def open_raw(path):
        header, n = header_of(path)
        data = open(path, "rb").read()
        return lambda key: data[8 + n + header[key]["data_offsets"][0]:8 + n + header[key]["data_offsets"][1]]
    return "python standard library (neither safetensors nor torch importable: raw bytes, not decoded)", open_raw


def finite_count(dtype, raw):
    """Non-finite float values (f32 and bf16 by their exponent bits; FP8 e4m3 NaN codes)."""
    if dtype == "F32":
        return sum(1 for (w,) in struct.iter_unpack("<I", raw) if (w >> 23) & 0xFF == 0xFF)
    if dtype == "BF16":
        return sum(1 for (h,) in struct.iter_unpack("<H", raw) if (h >> 7) & 0xFF == 0xFF)
    if dtype == "F8_E4M3":
        return sum(1 for b in raw if b & 0x7F == 0x7F)
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--json")
    ap.add_argument("--max-scan-bytes", type=int, default=64 << 20, help="finiteness scan limit per tensor")
    a = ap.parse_args()
    ckpt = resolve(a.ckpt)
    meta, meta_ok = read_metadata(ckpt)
    name = f"rank-{a.rank}.safetensors"
    path = os.path.join(ckpt, name)
    which, open_fn = reader()
    print(f"read_safetensors: {path} ({os.path.getsize(path)} bytes) with {which}")
    print(f"  metadata.json body sha256 {'ok' if meta_ok else 'MISMATCH'}; step {meta['step']}, mesh {meta['mesh']}, chunk {meta['chunk_bytes']} bytes")
    header, n = header_of(path)
    get = open_fn(path)
    chunk = meta["chunk_bytes"]
    rows, fails = [], 0 if meta_ok else 1
    for tname, tm in sorted(meta["tensors"].items()):
        for p in tm["pieces"]:
            if p["file"] != name:
                continue
            problems = []
            e = header.get(p["key"])
            if e is None:
                problems.append("not in the header")
            else:
                if e["dtype"] != ST_DTYPE[tm["dtype"]]:
                    problems.append(f"dtype {e['dtype']} != {ST_DTYPE[tm['dtype']]}")
                if e["shape"] != p["shape"]:
                    problems.append(f"shape {e['shape']} != {p['shape']}")
                rng = [8 + n + e["data_offsets"][0], 8 + n + e["data_offsets"][1]]
                if rng != p["byte_range"]:
                    problems.append(f"byte range {rng} != {p['byte_range']}")
                raw = get(p["key"])
                want_len = p["byte_range"][1] - p["byte_range"][0]
                if len(raw) != want_len:
                    problems.append(f"{len(raw)} bytes read, {want_len} expected")
                hashes = [hashlib.sha256(raw[i:i + chunk]).hexdigest() for i in range(0, len(raw), chunk)]
                bad = [i for i, (h, w) in enumerate(zip(hashes, p["sha256"])) if h != w]
                if len(hashes) != len(p["sha256"]) or bad:
                    problems.append(f"checksums differ in chunks {bad[:5]} (of {len(p['sha256'])})")
                nonfinite = finite_count(e["dtype"], raw[:a.max_scan_bytes])
                if nonfinite:
                    problems.append(f"{nonfinite} non-finite values")
            fails += bool(problems)
            rows.append({"tensor": tname, "dtype": tm["dtype"], "shape": p["shape"], "offset": p["offset"], "chunks": len(p["sha256"]), "ok": not problems, "problems": problems})
            print(f"  {'ok  ' if not problems else 'FAIL'} {tname:28} {tm['dtype']:8} {str(p['shape']):18} {len(p['sha256']):>5} chunks{'' if not problems else '  ' + '; '.join(problems)}")
    print(f"read_safetensors: {len(rows)} pieces, {fails} failed -> {'ALL PASS' if not fails and rows else 'FAIL'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"file": path, "reader": which, "metadata_ok": meta_ok, "pieces": rows}, f, indent=1)
    return 0 if rows and not fails else 1


if __name__ == "__main__":
    sys.exit(main())
