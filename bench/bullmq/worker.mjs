// BullMQ side of the benchmark: one worker process serving `add` and
// `sleep` on the queue "bench". Prints "ready" once connected.
//
//   node worker.mjs --redis redis://127.0.0.1:6391 --concurrency 50
import { Worker } from 'bullmq';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';

const { values } = parseArgs({
  options: {
    redis: { type: 'string', default: 'redis://127.0.0.1:6391' },
    concurrency: { type: 'string', default: '50' },
    queue: { type: 'string', default: 'bench' },
  },
});
const url = new URL(values.redis);
const connection = { host: url.hostname, port: Number(url.port || 6379) };

// BullMQ's defaults otherwise (lockDuration 30 s, stalledInterval 30 s,
// maxStalledCount 1, drainDelay 5 s); jobs are kept after completion.
const worker = new Worker(
  values.queue,
  async (job) => {
    switch (job.name) {
      case 'add':
        return job.data.a + job.data.b;
      case 'sleep':
        await sleep(job.data.seconds * 1000);
        return null;
      default:
        throw new Error(`unknown task ${job.name}`);
    }
  },
  { connection, concurrency: Number(values.concurrency) },
);
worker.on('error', (error) => console.error('worker error:', error.message));
await worker.waitUntilReady();
process.stdout.write('ready\n');
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, async () => {
    await worker.close();
    process.exit(0);
  });
}
