// The rendezvous store: a small key-value server on the master that hands out what ranks must share
// (the NCCL unique id) and counts arrivals. It serves only peers that present the job's token, and
// its lines and values are bounded so a stray client cannot make it grow without end.
import { createServer, type Server, type Socket } from "node:net";
import { timingSafeEqual } from "node:crypto";

const MAX_LINE = 64 * 1024;
const MAX_KEYS = 4096;

export interface StoreServer {
  port: number;
  close(): Promise<void>;
  /** Connections refused for a wrong token (for tests and logs). */
  refused: number;
}

type Req = { id?: unknown; token?: unknown; op?: unknown; key?: unknown; value?: unknown; amount?: unknown };

function sameToken(a: string, b: string): boolean {
  const x = Buffer.from(a), y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** Starts a store on host:port (port 0: any free port). */
export function startStore(token: string, port = 0, host = "127.0.0.1"): Promise<StoreServer> {
  const data = new Map<string, string>();
  const waiters = new Map<string, Set<() => void>>();
  const notify = (key: string) => {
    for (const w of waiters.get(key) ?? []) w();
    waiters.delete(key);
  };
  const state = { refused: 0 };

  const handle = (sock: Socket, line: string, authed: { ok: boolean }) => {
    let req: Req;
    try {
      req = JSON.parse(line) as Req;
    } catch {
      sock.write(JSON.stringify({ error: "malformed request" }) + "\n");
      return sock.destroy();
    }
    // answers carry the request's id: a client may have several waits open at once
    const id = typeof req.id === "number" ? req.id : null;
    const reply = (o: object) => sock.write(JSON.stringify({ id, ...o }) + "\n");
    if (!authed.ok) {
      if (typeof req.token !== "string" || !sameToken(req.token, token)) {
        state.refused++;
        reply({ error: "refused: wrong or missing job token (SHARDTS_JOB_TOKEN)" });
        return sock.end();
      }
      authed.ok = true;
    }
    const key = typeof req.key === "string" ? req.key : undefined;
    if (!key) return reply({ error: "a request needs a string key" });
    switch (req.op) {
      case "set":
        if (typeof req.value !== "string") return reply({ error: "set needs a string value" });
        if (!data.has(key) && data.size >= MAX_KEYS) return reply({ error: "store is full" });
        data.set(key, req.value);
        notify(key);
        return reply({ ok: true });
      case "add": {
        const n = Number(data.get(key) ?? "0") + Number(req.amount ?? 1);
        data.set(key, String(n));
        notify(key);
        return reply({ value: String(n) });
      }
      case "get": {
        // waits until the key exists
        const send = () => reply({ value: data.get(key) });
        if (data.has(key)) return send();
        const set = waiters.get(key) ?? new Set();
        set.add(send);
        waiters.set(key, set);
        sock.once("close", () => set.delete(send));
        return;
      }
      case "delete": {
        // keys starting with `key` (a finished barrier's keys, so that the store stays bounded)
        let n = 0;
        for (const k of [...data.keys()]) if (k.startsWith(key)) data.delete(k), n++;
        return reply({ value: String(n) });
      }
      case "list":
        // keys starting with `key` (who has arrived, for error messages)
        return reply({ value: JSON.stringify([...data.keys()].filter((k) => k.startsWith(key))) });
      default:
        return reply({ error: `unknown op ${JSON.stringify(req.op)}` });
    }
  };

  const server: Server = createServer((sock) => {
    const authed = { ok: false };
    let buf = "";
    sock.setEncoding("utf8");
    sock.on("data", (chunk: string) => {
      buf += chunk;
      if (buf.length > MAX_LINE) {
        sock.write(JSON.stringify({ error: "request too long" }) + "\n");
        return sock.destroy();
      }
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        handle(sock, line, authed);
        if (sock.destroyed) return;
      }
    });
    sock.on("error", () => sock.destroy());
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      const addr = server.address();
      resolve({
        port: typeof addr === "object" && addr ? addr.port : port,
        get refused() {
          return state.refused;
        },
        close: () => new Promise<void>((r) => server.close(() => r())),
      });
    });
  });
}
