'use strict';
// devloop shop example, worker: a background process with no port (node built-ins only).
// Every 2 s it "processes a job" and logs `<VERSION> processed job N`.
// SIGTERM/SIGINT stop it at once (exit 0), between jobs.
// Tests change the log line by editing the VERSION line below (plain text replacement).
const VERSION = 'worker v1';

const INTERVAL_MS = Number.parseInt(process.env.JOB_INTERVAL_MS || '2000', 10);

function start() {
  let jobs = 0;
  const timer = setInterval(() => {
    jobs += 1;
    console.log(`${VERSION} processed job ${jobs}`);
  }, INTERVAL_MS);

  const shutdown = (signal) => {
    clearInterval(timer);
    console.log(`${VERSION}: received ${signal} after ${jobs} jobs, exiting`);
    process.exit(0);
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));

  console.log(`${VERSION} started, one job every ${INTERVAL_MS} ms`);
  return timer;
}

module.exports = { VERSION, start };

if (require.main === module) start();
