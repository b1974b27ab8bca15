'use strict';
// Starts server.js as a child process on an ephemeral port (PORT=0) and exercises its endpoints.
// Run with: npm test   (or: node --test)
const { test, before, after } = require('node:test');
const assert = require('node:assert');
const { spawn } = require('node:child_process');
const http = require('node:http');
const path = require('node:path');

const SERVER = path.join(__dirname, '..', 'server.js');
const { MESSAGE, REVISION } = require(SERVER); // requiring does not start the server

let child;
let port;

function get(urlPath, method = 'GET') {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: urlPath, method, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

function startServer() {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [SERVER], {
      env: { ...process.env, PORT: '0', HOSTNAME: 'test-pod-0', DEVLOOP_IMAGE_TAG: 'dl-0123abcd' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    const timer = setTimeout(() => reject(new Error(`server did not start; stdout: ${out}`)), 5000);
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/listening on :(\d+)/);
      if (m && !port) {
        clearTimeout(timer);
        resolve({ proc, port: Number(m[1]) });
      }
    });
    proc.on('exit', (code) => reject(new Error(`server exited early with ${code}; stdout: ${out}`)));
  });
}

before(async () => {
  ({ proc: child, port } = await startServer());
});

after(() => {
  if (child && child.exitCode === null) child.kill('SIGKILL');
});

// First in this file: it scrapes before the server has answered any request.
test('the request series exist from the start, at 0 (a burst before the second scrape is not lost)', async () => {
  const res = await get('/metrics');
  for (const labels of ['path="/",status="200"', 'path="/",status="405"', 'path="/healthz",status="200"', 'path="other",status="404"']) {
    assert.strictEqual(sample(res.body, 'http_requests_total', labels), 0, `${labels}\n${res.body}`);
    assert.strictEqual(sample(res.body, 'http_request_duration_seconds_count', labels), 0, `${labels}\n${res.body}`);
    assert.strictEqual(sample(res.body, 'http_request_duration_seconds_bucket', `${labels},le="+Inf"`), 0, res.body);
  }
});

test('GET / returns the message and the pod name header', async () => {
  const res = await get('/');
  assert.strictEqual(res.status, 200);
  assert.strictEqual(res.body, MESSAGE + '\n');
  assert.strictEqual(res.headers['x-pod-name'], 'test-pod-0');
  assert.match(res.headers['content-type'], /^text\/plain/);
});

test('GET /healthz returns ok', async () => {
  const res = await get('/healthz');
  assert.strictEqual(res.status, 200);
  assert.strictEqual(res.body.trim(), 'ok');
});

test('unknown path returns 404, wrong method 405', async () => {
  assert.strictEqual((await get('/nope')).status, 404);
  assert.strictEqual((await get('/', 'POST')).status, 405);
});

test('GET /metrics exposes Prometheus text format', async () => {
  await get('/');
  const res = await get('/metrics');
  assert.strictEqual(res.status, 200);
  assert.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/);
  assert.match(res.body, /^# TYPE http_requests_total counter$/m);
  assert.match(res.body, /^http_requests_total\{path="\/",status="200"\} [1-9]\d*$/m);
  assert.match(res.body, /^http_requests_total\{path="\/healthz",status="200"\} 1$/m);
  assert.match(res.body, /^http_requests_total\{path="other",status="404"\} 1$/m);
  assert.match(res.body, /^# TYPE app_info gauge$/m);
  const version = require('../package.json').version;
  assert.ok(
    res.body.includes(
      `app_info{version="${version}",revision="${REVISION}",image_tag="dl-0123abcd",node_version="${process.version}"} 1\n`,
    ),
    res.body,
  );
  assert.match(res.body, /^process_uptime_seconds \d+(\.\d+)?$/m);
});

function sample(body, name, labels) {
  const line = body.split('\n').find((l) => l.startsWith(`${name}{${labels}} `));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

test('GET /metrics has a latency histogram by path and status', async () => {
  await get('/nope');
  await get('/nope');
  const res = await get('/metrics');
  assert.match(res.body, /^# TYPE http_request_duration_seconds histogram$/m);
  const labels = 'path="other",status="404"';
  const count = sample(res.body, 'http_request_duration_seconds_count', labels);
  assert.ok(count >= 2, res.body);
  assert.strictEqual(count, sample(res.body, 'http_requests_total', labels));
  assert.strictEqual(sample(res.body, 'http_request_duration_seconds_bucket', `${labels},le="+Inf"`), count);
  // buckets are cumulative and end at the count; a local request is fast, so it is in the 10 s bucket
  const buckets = [...res.body.matchAll(/^http_request_duration_seconds_bucket\{path="other",status="404",le="([^"]+)"\} (\d+)$/gm)];
  assert.strictEqual(buckets.length, 12, res.body);
  const counts = buckets.map((m) => Number(m[2]));
  counts.forEach((c, i) => assert.ok(i === 0 || c >= counts[i - 1], `bucket ${buckets[i][1]} decreases: ${counts}`));
  assert.strictEqual(sample(res.body, 'http_request_duration_seconds_bucket', `${labels},le="10"`), count);
  const sum = sample(res.body, 'http_request_duration_seconds_sum', labels);
  assert.ok(sum > 0 && sum < count * 10, `sum ${sum}`);
});

test('the revision changes with the source (what a rollout of an edit shows)', () => {
  const fs = require('node:fs');
  const os = require('node:os');
  const { execFileSync } = require('node:child_process');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sample-app-'));
  try {
    fs.copyFileSync(path.join(__dirname, '..', 'package.json'), path.join(dir, 'package.json'));
    const source = fs.readFileSync(SERVER, 'utf8');
    const revisionOf = (text) => {
      fs.writeFileSync(path.join(dir, 'server.js'), text);
      return execFileSync(process.execPath, ['-p', `require(${JSON.stringify(path.join(dir, 'server.js'))}).REVISION`], {
        encoding: 'utf8',
      }).trim();
    };
    assert.strictEqual(revisionOf(source), REVISION);
    const edited = revisionOf(source.replace(MESSAGE, 'Hello from devloop sample-app v2'));
    assert.match(edited, /^[0-9a-f]{12}$/);
    assert.notStrictEqual(edited, REVISION);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('SIGTERM stops the server promptly with exit code 0', async () => {
  // keep an idle keep-alive connection open: shutdown must not wait for it
  const agent = new http.Agent({ keepAlive: true });
  await new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/healthz', agent }, (res) => {
      res.resume();
      res.on('end', resolve);
    }).on('error', reject);
  });
  const started = Date.now();
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  child.kill('SIGTERM');
  const { code, signal } = await exited;
  const ms = Date.now() - started;
  agent.destroy();
  assert.strictEqual(signal, null);
  assert.strictEqual(code, 0);
  assert.ok(ms < 1000, `shutdown took ${ms} ms`);
});
