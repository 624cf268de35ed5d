// BullMQ side of the benchmark: one worker process serving `add`, `sleep`
// and `tsum` on the queue "bench". Prints "ready" once connected.
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
        // W5's chain: a step without `a` is a flow parent whose one child is
        // the previous step; its value takes the place of `a`.
        if (job.data.a === undefined) {
          const values = Object.values(await job.getChildrenValues());
          if (values.length !== 1) throw new Error(`a chain step got ${values.length} inputs`);
          return values[0] + job.data.b;
        }
        return job.data.a + job.data.b;
      case 'tsum': {
        // W5's chord callback: a flow parent summing its children's values;
        // how many it received is kept in the job's progress for the driver.
        const values = Object.values(await job.getChildrenValues());
        await job.updateProgress({ received: values.length });
        return values.reduce((a, b) => a + b, 0);
      }
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
