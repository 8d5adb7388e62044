'use strict';
// The misbehaving backend of `cargo xtask demo` (Node.js, no dependencies).
//
// Usage: node backend.js HOST ROUTES_PORT KEEPALIVE_PORT
//
// On ROUTES_PORT, by request path, always after reading the whole request:
//   /ok     answer 200
//   /reset  reset the connection (RST) instead of answering
//   /close  close the connection (FIN) without a response byte
// On KEEPALIVE_PORT every request gets 200, and an idle keep-alive
// connection is closed after 1 s (server.keepAliveTimeout; Node.js adds
// 1 s to it).
// One line per request goes to stdout.

const http = require('http');

const [host, routesPort, keepalivePort] = process.argv.slice(2);
if (!host || !routesPort || !keepalivePort) {
  console.error('usage: node backend.js HOST ROUTES_PORT KEEPALIVE_PORT');
  process.exit(2);
}

function log(server, req, what) {
  const peer = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
  console.log(`${new Date().toISOString()} ${server} ${req.method} ${req.url} from ${peer}: ${what}`);
}

// Calls `then` once the request (headers and body) has been read.
function afterRequest(req, then) {
  req.on('end', then);
  req.resume();
}

const routes = http.createServer((req, res) => {
  afterRequest(req, () => {
    const path = req.url.split('?')[0];
    switch (path) {
      case '/ok':
        log('routes', req, '200');
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end('ok\n');
        break;
      case '/reset':
        log('routes', req, 'RST, no response');
        req.socket.resetAndDestroy();
        break;
      case '/close':
        log('routes', req, 'FIN, no response');
        req.socket.end();
        break;
      default:
        log('routes', req, '404');
        res.writeHead(404, { 'content-type': 'text/plain' });
        res.end('no such route\n');
    }
  });
});

const keepalive = http.createServer((req, res) => {
  afterRequest(req, () => {
    log('keepalive', req, '200, connection kept open for 1 s');
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(`${req.method} ok\n`);
  });
});
// Close idle keep-alive connections after 1 s, much sooner than nginx's
// upstream pool (60 s) would: the classic keep-alive race. Node.js 20.20
// (and 22.x, 24.x) really closes them 1 s later than this says.
keepalive.keepAliveTimeout = 1000;

for (const [server, port] of [[routes, routesPort], [keepalive, keepalivePort]]) {
  server.on('error', (err) => {
    console.error(`cannot listen on ${host}:${port}: ${err.message}`);
    process.exit(1);
  });
  server.listen(Number(port), host, () => console.log(`listening on ${host}:${port}`));
}

process.on('SIGTERM', () => process.exit(0));
