// For the tests: `.venv/bin/guestfeed serve --demo` in a fresh folder, as
// tests/test_readme_grpcurl.py runs it (`make run`'s command, a port the OS
// picks), tokens minted with `guestfeed token` in the same folder (it signs
// with the dev secret the server keeps in .guestfeed/), and what the demo
// seeds, from the Python side.

import { execFile, spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { access, mkdtemp, readFile, rm, symlink } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);

/** The repository root (src/ and dist/ are both three levels down). */
export const ROOT = fileURLToPath(new URL("../../../", import.meta.url));
const VENV = join(ROOT, ".venv");
const READY = /guestfeed serving on 127\.0\.0\.1:(\d+)/;
const BANNER = /Demo event (\S+) \((seeded|already present)\)/;

/** Why the demo server cannot run here, or undefined. */
export async function missing(): Promise<string | undefined> {
  for (const tool of ["guestfeed", "python"]) {
    try {
      await access(join(VENV, "bin", tool));
    } catch {
      return `.venv/bin/${tool} is not installed (make run installs it)`;
    }
  }
  return undefined;
}

/** A new user's shell: no GUESTFEED_*, OTEL_* or GRPC_* settings, the venv first on PATH. */
function commandEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!/^(GUESTFEED_|OTEL_|GRPC_)/.test(k)) env[k] = v;
  }
  env.PATH = `${join(VENV, "bin")}:${process.env.PATH ?? ""}`;
  return env;
}

/** What `serve --demo` seeds, computed in Python from the demo's rows. */
export interface DemoFacts {
  eventId: string;
  guestId: string;
  /** The demo guest's V1 feed (the kill switch is on in a new database), newest first. */
  feed: string[];
  /** The demo guest's own message, first in the feed. */
  ownMessageId: string;
  /** The guest's rollout bucket. */
  bucket: number;
}

const FACTS = `
import asyncio, json
from guestfeed_server.cli.demo import DEMO_GUEST_ID, EVENT_ID, uid
from guestfeed_server.rollout.bucketing import bucket
from tests.test_readme_grpcurl import demo_v1_feed
print(json.dumps({
    "eventId": str(EVENT_ID),
    "guestId": str(DEMO_GUEST_ID),
    "feed": asyncio.run(demo_v1_feed(DEMO_GUEST_ID)),
    "ownMessageId": str(uid("msg:reply:0")),
    "bucket": bucket(str(EVENT_ID), str(DEMO_GUEST_ID)),
}))
`;

export async function demoFacts(): Promise<DemoFacts> {
  const { stdout } = await run(join(VENV, "bin", "python"), ["-c", FACTS], {
    cwd: ROOT,
    env: commandEnv(),
  });
  return JSON.parse(stdout) as DemoFacts;
}

export class DemoServer {
  private constructor(
    private readonly proc: ChildProcess,
    readonly port: number,
    readonly folder: string,
  ) {}

  get baseUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Starts it in a new folder (with .venv linked to ours) and waits until it serves. */
  static async start(timeoutMs = 120_000): Promise<DemoServer> {
    const folder = await mkdtemp(join(tmpdir(), "guestfeed-ts-"));
    await symlink(VENV, join(folder, ".venv"), "dir");
    const outPath = join(folder, "serve.stdout");
    const errPath = join(folder, "serve.stderr");
    const out = openSync(outPath, "w");
    const err = openSync(errPath, "w");
    const proc = spawn(join(folder, ".venv", "bin", "guestfeed"), ["serve", "--demo"], {
      cwd: folder,
      env: { ...commandEnv(), GUESTFEED_LISTEN: "127.0.0.1:0" },
      stdio: ["ignore", out, err],
    });
    closeSync(out);
    closeSync(err);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const [stdout, stderr] = await Promise.all([readFile(outPath, "utf8"), readFile(errPath, "utf8")]);
      const ready = READY.exec(stderr);
      const banner = BANNER.exec(stdout);
      if (ready?.[1] && banner) {
        const server = new DemoServer(proc, Number(ready[1]), folder);
        if (banner[2] !== "seeded") {
          await server.stop();
          throw new Error("the folder's database must be new");
        }
        return server;
      }
      if (proc.exitCode !== null || proc.signalCode !== null || Date.now() > deadline) {
        proc.kill("SIGKILL");
        await rm(folder, { recursive: true, force: true });
        throw new Error(`guestfeed serve --demo did not become ready:\n${stderr}`);
      }
      await sleep(100);
    }
  }

  /** A token for `user`, minted by `guestfeed token` in the server's folder. */
  async token(user: string, role?: string): Promise<string> {
    const args = ["token", "--user", user, ...(role ? ["--role", role] : [])];
    const { stdout } = await run(join(this.folder, ".venv", "bin", "guestfeed"), args, {
      cwd: this.folder,
      env: commandEnv(),
    });
    return stdout.trim();
  }

  /** SIGTERM, as Ctrl-C would; SIGKILL if it lingers. Then removes the folder. */
  async stop(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      const exited = new Promise<void>((resolve) => this.proc.once("exit", () => resolve()));
      this.proc.kill("SIGTERM");
      const timer = setTimeout(() => this.proc.kill("SIGKILL"), 30_000);
      await exited;
      clearTimeout(timer);
    }
    await rm(this.folder, { recursive: true, force: true });
  }
}
