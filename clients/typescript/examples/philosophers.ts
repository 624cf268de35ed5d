// Dining philosophers with several concurrency keys. Build with `npm run
// build`, then run `node dist/examples/philosophers.js`.
//
// Five philosophers sit around a table with a fork between each two. The
// forks are concurrency keys fork:0 .. fork:4 with limit 1, and philosopher
// i's meal (a task "eat") needs forks i and (i + 1) % 5. The server starts a
// meal only when both of its forks are free and takes them together, so nobody
// holds one fork while waiting for the other: no deadlock, whatever the order.
//
// Submits 5 meals per philosopher, runs a worker (5 slots) in this process
// until all are eaten, then prints the meals per philosopher, the most
// philosophers seen eating at once (at most 2: five forks make two pairs) and
// whether a fork was ever held by two. Exits 1 when either went wrong.
//
// Environment: CONVEYOR_ADDR (default http://127.0.0.1:50051), CONVEYOR_TLS_CA,
// CONVEYOR_TLS_CERT and CONVEYOR_TLS_KEY (TLS; see README), CONVEYOR_QUEUE
// (default "philosophers").

import { setTimeout as sleep } from "node:timers/promises";
import { Client, Worker, stderrLogger } from "../src/index.js";

const PHILOSOPHERS = 5;
const MEALS = 5;
const addr = process.env["CONVEYOR_ADDR"] || undefined; // undefined: the SDK's default (https:// with CONVEYOR_TLS_*)
const queue = process.env["CONVEYOR_QUEUE"] || "philosophers";

const forks = (i: number): number[] => [i, (i + 1) % PHILOSOPHERS];

// What the worker saw: forks in use, philosophers eating.
const held = new Set<number>();
let eating = 0;
let mostEating = 0;
let forkClash = false;

const worker = new Worker(addr, { queues: [queue], concurrency: PHILOSOPHERS, logger: stderrLogger("warn") });
worker.register("eat", async (_ctx, i: number) => {
  for (const fork of forks(i)) {
    forkClash ||= held.has(fork);
    held.add(fork);
  }
  mostEating = Math.max(mostEating, ++eating);
  await sleep(50);
  for (const fork of forks(i)) held.delete(fork);
  eating--;
  return i;
});

async function main(): Promise<boolean> {
  const stop = new AbortController();
  const running = worker.run({ signal: stop.signal, handleSignals: false });
  const client = new Client(addr);
  try {
    // The meals: each needs both of its forks at once.
    const meals = [];
    for (let meal = 0; meal < MEALS; meal++) {
      for (let i = 0; i < PHILOSOPHERS; i++) {
        const concurrencyKeys = forks(i).map((fork) => ({ key: `fork:${fork}`, limit: 1 }));
        meals.push({ name: "eat", args: [i], queue, concurrencyKeys });
      }
    }
    const ids = await client.submitMany(meals);
    const eaten = new Array<number>(PHILOSOPHERS).fill(0);
    for (const id of ids) eaten[await client.result<number>(id, { timeoutMs: 30_000 })]! += 1;

    eaten.forEach((count, i) => console.log(`philosopher ${i} ate ${count} meals`));
    console.log(`most eating at once: ${mostEating}`);
    console.log(`fork held by two at once: ${forkClash ? "yes" : "never"}`);
    return mostEating <= 2 && !forkClash;
  } finally {
    client.close();
    stop.abort(); // drains, then run() resolves
    await running;
  }
}

main().then(
  (ok) => process.exit(ok ? 0 : 1),
  (error: unknown) => {
    console.error("philosophers:", error);
    process.exit(1);
  },
);
