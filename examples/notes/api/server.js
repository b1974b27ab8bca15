'use strict';
// devloop notes example, api: the notes, stored in Postgres (the `pg` client, pinned in package-lock.json).
//   GET  /          -> {"service": "notes api", "version": "api v1", "endpoints": [...]}
//   GET  /api/notes -> {"version": "api v1", "notes": [{"id", "title", "body"}, ...]}, oldest first
//   POST /api/notes {"title", "body"} -> 201 and the new note
//   GET  /healthz   -> 200 ok when the database answers `select 1`, else 503 (the readiness probe:
//                      a pod that cannot reach the database takes no traffic)
// The connection comes from the standard libpq variables PGHOST, PGPORT, PGDATABASE, PGUSER and
// PGPASSWORD (the chart sets them; the user and password come from the Secret `db`).
// Tests change the answer by editing the VERSION line below (plain text replacement).
const VERSION = 'api v1';

const http = require('http');
const os = require('os');
const { Pool } = require('pg');

const PORT = Number.parseInt(process.env.PORT || '3000', 10);
const POD_NAME = process.env.HOSTNAME || os.hostname();
const MAX_BODY = 64 * 1024;

const pool = new Pool({ max: 4, connectionTimeoutMillis: 2000, idleTimeoutMillis: 10000 });
pool.on('error', (err) => console.error(`idle database connection lost: ${err.message}`));

function send(res, status, body) {
  const text = typeof body === 'string' ? body : JSON.stringify(body) + '\n';
  res.writeHead(status, {
    'Content-Type': typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json',
    'Content-Length': Buffer.byteLength(text),
    'Cache-Control': 'no-store',
    'X-Pod-Name': POD_NAME,
  });
  res.end(text);
}

function readJson(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) req.destroy(new Error('body too large'));
      else chunks.push(chunk);
    });
    req.on('error', reject);
    req.on('end', () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch {
        reject(new Error('invalid JSON'));
      }
    });
  });
}

async function handler(req, res) {
  const path = new URL(req.url, 'http://localhost').pathname;
  if (path === '/healthz') {
    try {
      await pool.query('SELECT 1');
      return send(res, 200, 'ok\n');
    } catch (err) {
      return send(res, 503, `database unavailable: ${err.message}\n`);
    }
  }
  if (path === '/') return send(res, 200, { service: 'notes api', version: VERSION, endpoints: ['/api/notes', '/healthz'] });
  if (path !== '/api/notes') return send(res, 404, 'not found\n');
  if (req.method === 'GET') {
    const { rows } = await pool.query('SELECT id, title, body FROM notes ORDER BY id');
    return send(res, 200, { version: VERSION, notes: rows });
  }
  if (req.method === 'POST') {
    let note;
    try {
      note = await readJson(req);
    } catch (err) {
      return send(res, 400, { error: err.message });
    }
    if (!note || typeof note.title !== 'string' || !note.title.trim()) return send(res, 400, { error: 'title is required' });
    const { rows } = await pool.query('INSERT INTO notes (title, body) VALUES ($1, $2) RETURNING id, title, body', [
      note.title.trim(),
      String(note.body || ''),
    ]);
    return send(res, 201, rows[0]);
  }
  res.setHeader('Allow', 'GET, POST');
  return send(res, 405, 'method not allowed\n');
}

const server = http.createServer((req, res) => {
  handler(req, res).catch((err) => {
    console.error(`${req.method} ${req.url}: ${err.message}`);
    if (!res.headersSent) send(res, 500, { error: err.message });
  });
});
server.keepAliveTimeout = 5000;

function shutdown(signal) {
  console.log(`${VERSION}: received ${signal}, shutting down`);
  setTimeout(() => process.exit(0), 500).unref(); // well within 1 s, whatever is in flight
  server.close(() => pool.end().finally(() => process.exit(0)));
  server.closeIdleConnections();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

server.listen(PORT, () => console.log(`${VERSION} listening on :${PORT}, database ${process.env.PGHOST || 'localhost'}`));
