// BullMQ drivers for W1-W5, the counterparts of `conveyor-bench drive`.
//
//   node driver.mjs w1|w2|w3|w4|w5 [--redis URL] [options]
//
// Prints one JSON object of figures on stdout. Spawns and kills its own
// worker processes (worker.mjs). Outcome times are BullMQ's own `finishedOn`
// (whole milliseconds, written by the worker's moveToFinished script).
import { FlowProducer, Queue, QueueEvents } from 'bullmq';
import IORedis from 'ioredis';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';

const QUEUE = 'bench';
const W2_WARMUP = 50;
const W5_WARMUP_CHORD = 10; // children of the flow run (and not measured) before W5's
const WORKER = fileURLToPath(new URL('./worker.mjs', import.meta.url));

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    redis: { type: 'string', default: 'redis://127.0.0.1:6391' },
    concurrency: { type: 'string', default: '50' },
    tasks: { type: 'string', default: '20000' },
    'round-trips': { type: 'string', default: '1000' },
    rate: { type: 'string', default: '500' },
    duration: { type: 'string', default: '20' },
    sweep: { type: 'string', default: '1000,2000,3000,5000,7500,10000,15000,20000,30000,50000' },
    'step-duration': { type: 'string', default: '5' },
    sample: { type: 'string', default: '5000' },
    'min-achieved': { type: 'string', default: '0.95' },
    'max-p99-ms': { type: 'string', default: '100' },
    'max-in-flight': { type: 'string', default: '4096' },
    leases: { type: 'string', default: '100' },
    sleep: { type: 'string', default: '3' },
    'recovery-cap': { type: 'string', default: '70' },
    'chord-tasks': { type: 'string', default: '10000' },
    'chain-steps': { type: 'string', default: '100' },
    samples: { type: 'boolean', default: false },
  },
});
const args = {
  redis: values.redis,
  concurrency: Number(values.concurrency),
  tasks: Number(values.tasks),
  roundTrips: Number(values['round-trips']),
  rate: Number(values.rate),
  duration: Number(values.duration),
  sweep: values.sweep.split(',').filter(Boolean).map(Number),
  stepDuration: Number(values['step-duration']),
  sample: Number(values.sample),
  minAchieved: Number(values['min-achieved']),
  maxP99: Number(values['max-p99-ms']),
  maxInFlight: Number(values['max-in-flight']),
  leases: Number(values.leases),
  sleep: Number(values.sleep),
  recoveryCap: Number(values['recovery-cap']),
  chordTasks: Number(values['chord-tasks']),
  chainSteps: Number(values['chain-steps']),
  samples: values.samples,
};
const url = new URL(args.redis);
const connection = { host: url.hostname, port: Number(url.port || 6379) };
const redis = new IORedis(connection);
const queue = new Queue(QUEUE, { connection });
const workers = [];

// Wall clock in ms with sub-ms precision.
const wallMs = () => performance.timeOrigin + performance.now();
const r3 = (v) => (v === null || Number.isNaN(v) ? null : Math.round(v * 1000) / 1000);

function percentile(sorted, q) {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((q / 100) * sorted.length);
  return sorted[Math.min(Math.max(rank, 1), sorted.length) - 1];
}

function summary(samples) {
  const s = [...samples].sort((a, b) => a - b);
  const mean = s.reduce((a, b) => a + b, 0) / (s.length || 1);
  return {
    n: s.length,
    p50_ms: r3(percentile(s, 50)),
    p90_ms: r3(percentile(s, 90)),
    p99_ms: r3(percentile(s, 99)),
    max_ms: r3(s.length ? s[s.length - 1] : NaN),
    mean_ms: r3(mean),
  };
}

async function spawnWorker(concurrency) {
  const child = spawn(
    process.execPath,
    [WORKER, '--redis', args.redis, '--concurrency', String(concurrency), '--queue', QUEUE],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  workers.push(child);
  let output = '';
  const ready = new Promise((resolve, reject) => {
    child.stdout.on('data', (chunk) => {
      output += chunk;
      if (output.includes('ready')) resolve();
    });
    child.on('exit', (code) => reject(new Error(`worker exited (${code}) before it was ready`)));
  });
  ready.catch(() => {}); // awaited where it matters; a late exit is not an error
  return { child, ready };
}

async function kill(child) {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = once(child, 'exit');
    child.kill('SIGKILL');
    await exited;
  }
}

async function killAll() {
  while (workers.length) await kill(workers.pop());
}

async function usedMemory() {
  const info = await redis.info('memory');
  return Number(/used_memory:(\d+)/.exec(info)[1]);
}

// INFO commandstats as {command: {calls, usec}}.
async function commandStats() {
  const out = {};
  for (const line of (await redis.info('commandstats')).split('\n')) {
    const m = /^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/.exec(line);
    if (m) out[m[1]] = { calls: Number(m[2]), usec: Number(m[3]) };
  }
  return out;
}

// finishedOn (ms) per job id, null while unfinished.
async function finishedOn(ids) {
  const out = [];
  for (let start = 0; start < ids.length; start += 1000) {
    const pipeline = redis.pipeline();
    for (const id of ids.slice(start, start + 1000)) pipeline.hget(`bull:${QUEUE}:${id}`, 'finishedOn');
    for (const [error, value] of await pipeline.exec()) {
      if (error) throw error;
      out.push(value === null ? null : Number(value));
    }
  }
  return out;
}

// Waits until every job is finished; their finishedOn, or null on time-out.
async function waitDone(ids, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  const done = new Array(ids.length).fill(null);
  let pending = ids.map((_, i) => i);
  while (pending.length) {
    const times = await finishedOn(pending.map((i) => ids[i]));
    const still = [];
    pending.forEach((i, k) => (times[k] === null ? still.push(i) : (done[i] = times[k])));
    pending = still;
    if (pending.length) {
      if (Date.now() > deadline) return null;
      await sleep(20);
    }
  }
  return done;
}

async function w1() {
  const n = args.tasks;
  const before = await usedMemory();
  const ids = [];
  const started = performance.now();
  for (let start = 0; start < n; start += 1000) {
    const batch = [];
    for (let i = start; i < Math.min(n, start + 1000); i++) batch.push({ name: 'add', data: { a: 2, b: 3 } });
    for (const job of await queue.addBulk(batch)) ids.push(job.id);
  }
  const enqueueS = (performance.now() - started) / 1e3;
  const after = await usedMemory();
  const spawnedAt = wallMs();
  await spawnWorker(args.concurrency);
  // Only the `completed` set's size is looked at while the worker drains.
  const deadline = Date.now() + 600_000;
  while ((await redis.zcard(`bull:${QUEUE}:completed`)) < n) {
    if (Date.now() > deadline) throw new Error('drain did not finish');
    await sleep(20);
  }
  const commands = await commandStats();
  const times = await waitDone(ids, 60_000);
  await killAll();
  const first = Math.min(...times);
  const last = Math.max(...times);
  return {
    tasks: n,
    tasks_per_s: r3((n - 1) / ((last - first) / 1e3)),
    drain_s: r3((last - first) / 1e3),
    spawn_to_last_s: r3((last - spawnedAt) / 1e3),
    spawn_to_first_s: r3((first - spawnedAt) / 1e3),
    enqueue_s: r3(enqueueS),
    enqueue_per_s: r3(n / enqueueS),
    redis_commands: commands,
    memory: {
      used_before: before,
      used_after: after,
      bytes_per_task: r3((after - before) / n),
      payload_bytes: JSON.stringify({ a: 2, b: 3 }).length,
    },
  };
}

async function w2() {
  const { ready } = await spawnWorker(args.concurrency);
  await ready;
  const events = new QueueEvents(QUEUE, { connection });
  await events.waitUntilReady();
  const samples = [];
  for (let i = 0; i < W2_WARMUP + args.roundTrips; i++) {
    const started = performance.now();
    const job = await queue.add('add', { a: 2, b: 3 });
    const result = await job.waitUntilFinished(events, 30_000);
    const elapsed = performance.now() - started;
    if (result !== 5) throw new Error(`unexpected result ${result}`);
    if (i >= W2_WARMUP) samples.push(elapsed);
  }
  await events.close();
  await killAll();
  const figures = summary(samples);
  if (args.samples) figures.samples_ms = samples.map(r3);
  return figures;
}

async function step(rate, duration, sample) {
  const n = Math.max(2, Math.round(rate * duration));
  const ids = new Array(n).fill(null);
  let inFlight = 0;
  let errors = 0;
  const pending = [];
  const start = performance.now();
  const startWall = wallMs();
  let next = 0;
  while (next < n) {
    const due = Math.min(n, Math.floor(((performance.now() - start) / 1e3) * rate) + 1);
    while (next < due) {
      while (inFlight >= args.maxInFlight) await sleep(1);
      const index = next++;
      inFlight++;
      pending.push(
        queue.add('add', { a: 2, b: 3 }).then(
          (job) => { ids[index] = job.id; inFlight--; },
          () => { errors++; inFlight--; },
        ),
      );
    }
    if (next < n) {
      const wait = start + (next / rate) * 1e3 - performance.now();
      await sleep(Math.max(0, wait));
    }
  }
  await Promise.all(pending);
  const producerS = (performance.now() - start) / 1e3;
  let picked;
  if (sample >= n) {
    picked = [...Array(n).keys()];
  } else {
    const edge = Math.min(100, Math.floor(n / 2));
    const chosen = new Set([...Array(edge).keys()].concat([...Array(edge).keys()].map((i) => n - 1 - i)));
    const extra = Math.min(Math.max(sample - 2 * edge, 0), n - 2 * edge);
    while (chosen.size < 2 * edge + extra) chosen.add(edge + Math.floor(Math.random() * (n - 2 * edge)));
    picked = [...chosen].sort((a, b) => a - b);
  }
  picked = picked.filter((i) => ids[i] !== null);
  const cap = Math.max(10, 2 * duration) * 1e3;
  const tailDone = (await waitDone(picked.slice(-100).map((i) => ids[i]), cap)) !== null;
  const latencies = [];
  let first = Infinity;
  let last = -Infinity;
  let unfinished = n;
  if (tailDone) {
    const times = await waitDone(picked.map((i) => ids[i]), 10_000);
    unfinished = times === null ? picked.length : 0;
    if (times) {
      picked.forEach((i, k) => {
        latencies.push(times[k] - (startWall + (i / rate) * 1e3));
        first = Math.min(first, times[k]);
        last = Math.max(last, times[k]);
      });
    }
  }
  const achieved = last > first ? (n - 1) / ((last - first) / 1e3) : 0;
  const p99 = percentile([...latencies].sort((a, b) => a - b), 99);
  const sustained =
    tailDone && errors === 0 && unfinished === 0 && achieved >= args.minAchieved * rate && p99 <= args.maxP99;
  return {
    figures: {
      ...summary(latencies),
      rate,
      tasks: n,
      errors,
      unfinished,
      producer_rate: r3(n / producerS),
      achieved_rate: r3(achieved),
      sustained,
    },
    latencies,
  };
}

async function w3() {
  const { ready } = await spawnWorker(args.concurrency);
  await ready;
  await step(args.rate, 0.5, 0); // warm-up
  const { figures: main, latencies } = await step(args.rate, args.duration, Infinity);
  let best = main.sustained ? args.rate : 0;
  const sweep = [];
  if (main.sustained) {
    for (const rate of args.sweep.filter((r) => r > args.rate)) {
      await sleep(300);
      const { figures } = await step(rate, args.stepDuration, args.sample);
      sweep.push(figures);
      if (!figures.sustained) break;
      best = rate;
    }
  }
  await killAll();
  if (args.samples) main.samples_ms = latencies.map(r3);
  return { ...main, sweep, max_sustainable_rate: best, duration_s: args.duration, step_duration_s: args.stepDuration };
}

async function w4() {
  const n = args.leases;
  const jobs = await queue.addBulk(Array.from({ length: n }, () => ({ name: 'sleep', data: { seconds: args.sleep } })));
  const ids = jobs.map((job) => job.id);
  const victim = await spawnWorker(n);
  const deadline = Date.now() + 30_000;
  while ((await redis.llen(`bull:${QUEUE}:active`)) < n) {
    if (Date.now() > deadline) throw new Error('the first worker did not take every job');
    await sleep(5);
  }
  const standby = await spawnWorker(n);
  await standby.ready;
  const held = await redis.llen(`bull:${QUEUE}:active`);
  const killedAt = wallMs();
  await kill(victim.child);
  const released = new Map();
  const done = new Map();
  const cap = Date.now() + args.recoveryCap * 1e3;
  while (done.size < n && Date.now() < cap) {
    const pipeline = redis.pipeline();
    for (const id of ids) pipeline.hmget(`bull:${QUEUE}:${id}`, 'ats', 'processedOn', 'finishedOn');
    const rows = await pipeline.exec();
    rows.forEach(([error, [ats, processedOn, finished]], k) => {
      if (error) throw error;
      if (Number(ats) >= 2 && !released.has(ids[k])) released.set(ids[k], Number(processedOn));
      if (finished !== null && !done.has(ids[k])) done.set(ids[k], Number(finished));
    });
    if (done.size < n) await sleep(20);
  }
  await killAll();
  const since = (m) => [...m.values()].map((t) => (t - killedAt) / 1e3).sort((a, b) => a - b);
  const rel = since(released);
  const fin = since(done);
  return {
    leases: n,
    held_at_kill: held,
    sleep_s: args.sleep,
    released: rel.length,
    all_released_s: rel.length === n ? r3(rel[rel.length - 1]) : null,
    first_released_s: rel.length ? r3(rel[0]) : null,
    median_released_s: rel.length ? r3(percentile(rel, 50)) : null,
    done: fin.length,
    all_done_s: fin.length === n ? r3(fin[fin.length - 1]) : null,
    cap_s: args.recoveryCap,
    note:
      'one worker process of concurrency = leases killed, a second one standing by; stalled jobs return ' +
      'after the lock expires (lockDuration 30 s) and a stalled check runs (stalledInterval 30 s)',
  };
}

// One job's stored outcome once it is finished: finishedOn (ms), its value,
// its progress; fails when it failed or nothing is stored within timeoutMs.
async function outcome(id, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [finished, value, progress, failed] = await redis.hmget(
      `bull:${QUEUE}:${id}`, 'finishedOn', 'returnvalue', 'progress', 'failedReason');
    if (failed) throw new Error(`job ${id} failed: ${failed}`);
    if (finished !== null) {
      return { finishedOn: Number(finished), value: JSON.parse(value), progress: JSON.parse(progress ?? 'null') };
    }
    if (Date.now() > deadline) throw new Error(`job ${id} not finished after ${timeoutMs} ms`);
    await sleep(20);
  }
}

// A flow parent `tsum` with n children `add(2, 3)`: BullMQ's chord. The
// parent waits in waiting-children until the last child completes.
async function runChord(flow, n) {
  const children = Array.from({ length: n }, () => ({ name: 'add', queueName: QUEUE, data: { a: 2, b: 3 } }));
  const startedWall = wallMs();
  const started = performance.now();
  const tree = await flow.add({ name: 'tsum', queueName: QUEUE, data: {}, children });
  const submitS = (performance.now() - started) / 1e3;
  const parent = await outcome(tree.job.id, 600_000);
  return {
    submitS,
    chordS: (parent.finishedOn - startedWall) / 1e3,
    sum: parent.value,
    received: parent.progress?.received ?? null,
  };
}

async function w5() {
  const { ready } = await spawnWorker(args.concurrency);
  await ready;
  const flow = new FlowProducer({ connection });
  try {
    await runChord(flow, W5_WARMUP_CHORD); // warm-up: connections, the worker's loop
    const n = args.chordTasks;
    const chord = await runChord(flow, n);

    // BullMQ has no chain: a flow tree nested as deep as the chain is long,
    // each parent `add` taking its one child's value (the first step is the
    // deepest leaf). The worker moves a parent to wait when its child ends.
    const steps = args.chainSteps;
    let node = { name: 'add', queueName: QUEUE, data: { a: 0, b: 1 } };
    for (let i = 1; i < steps; i++) node = { name: 'add', queueName: QUEUE, data: { b: 1 }, children: [node] };
    const startedWall = wallMs();
    const tree = await flow.add(node);
    const ids = [];
    for (let t = tree; t; t = t.children?.[0]) ids.push(t.job.id);
    ids.reverse();
    const last = await outcome(ids[ids.length - 1], 120_000);
    const times = await waitDone(ids, 10_000);
    if (times === null) throw new Error('a chain step is unfinished although the last one is done');
    const gaps = times.slice(1).map((t, i) => t - times[i]).sort((a, b) => a - b);
    await killAll();
    return {
      chord_tasks: n,
      chord_submit_s: r3(chord.submitS),
      chord_s: r3(chord.chordS),
      chord_ok: chord.sum === 5 * n && chord.received === n,
      chord_received: chord.received,
      chord_sum: chord.sum,
      chain_steps: steps,
      chain_s: r3((times[times.length - 1] - startedWall) / 1e3),
      chain_step_p50_ms: r3(percentile(gaps, 50)),
      chain_step_p99_ms: r3(percentile(gaps, 99)),
      chain_ok: last.value === steps && ids.length === steps,
      note:
        'chord: FlowProducer.add of a parent tsum (getChildrenValues) with N add children, one MULTI; ' +
        'chain: no native chain, a flow tree nested N deep, each parent add taking its child\'s value; ' +
        'times from finishedOn (whole ms)',
    };
  } finally {
    await flow.close();
  }
}

const workloads = { w1, w2, w3, w4, w5 };
const workload = positionals[0];
if (!workloads[workload]) {
  console.error('usage: node driver.mjs w1|w2|w3|w4|w5 [options]');
  process.exit(2);
}
let figures;
try {
  figures = await workloads[workload]();
} finally {
  await killAll();
  await queue.close();
  redis.disconnect();
}
figures = { ...figures, system: 'bullmq', config: `1 process, concurrency ${args.concurrency}`, workload };
process.stdout.write(`${JSON.stringify(figures)}\n`);
process.exit(0);
