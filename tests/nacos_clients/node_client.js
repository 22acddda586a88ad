// Drives the published Node.js Nacos client (npm `nacos` 2.6.x, HTTP v1 API with client beats and
// a polling subscription) against Nacos-compatible servers and prints one JSON line per step, for
// the Nacos front end's integration test to check.
//
//   node node_client.js roundtrip --write HOST:PORT --read HOST:PORT --service NAME [--group G]
//                                 [--ip IP] [--port P] [--timeout-s S]
//   node node_client.js hold      --write HOST:PORT --service NAME [--group G] [--ip IP] [--port P]
//                                 [--lease-ms INTERVAL,TIMEOUT,DELETE]
//
// The client is loaded from $NACOS_NODE_MODULES (default: the folder install.sh fills,
// ~/.cache/distro-nacos-clients/node/node_modules). `roundtrip` registers at the --write node and
// reads and subscribes at the --read node through two separate clients; `hold` registers and keeps
// beating until the process is killed (or its stdin closes), so that the test can watch the
// instance go.
//
// Every step prints {"client":"node","step":...,"ok":true|false,...}; the first failed step ends
// the process with exit code 1.
'use strict';

const os = require('os');
const path = require('path');
const util = require('util');

const CLIENT = 'node';
// The longest a `hold` process lives if nobody kills it.
const HOLD_MAX_MS = 600 * 1000;

const modules = process.env.NACOS_NODE_MODULES ||
  path.join(os.homedir(), '.cache', 'distro-nacos-clients', 'node', 'node_modules');
const { NacosNamingClient } = require(require.resolve('nacos', { paths: [ modules ] }));

function emit(step, ok, extra = {}) {
  process.stdout.write(JSON.stringify(Object.assign({ client: CLIENT, step, ok }, extra)) + '\n');
}

function fail(step, error) {
  emit(step, false, { error: String(error && error.message ? error.message : error) });
  process.exit(1);
}

// The client logs through the logger it is given; keep stdout for our JSON lines.
const logger = {
  debug() {},
  info(...args) { process.stderr.write('[info] ' + util.format(...args) + '\n'); },
  warn(...args) { process.stderr.write('[warn] ' + util.format(...args) + '\n'); },
  error(...args) { process.stderr.write('[error] ' + util.format(...args) + '\n'); },
};

function parseArgs(argv) {
  const usage = () => {
    process.stderr.write('usage: node node_client.js roundtrip|hold --write HOST:PORT [--read HOST:PORT] ' +
      '--service NAME [--group G] [--ip IP] [--port P] [--timeout-s S] [--lease-ms I,T,D]\n');
    process.exit(2);
  };
  const args = { mode: argv[0], group: 'DEFAULT_GROUP', ip: '127.0.0.1', port: 20000, timeoutMs: 30000 };
  if (args.mode !== 'roundtrip' && args.mode !== 'hold') usage();
  for (let i = 1; i < argv.length; i += 2) {
    const value = argv[i + 1];
    if (value === undefined) usage();
    switch (argv[i]) {
      case '--write': args.write = value; break;
      case '--read': args.read = value; break;
      case '--service': args.service = value; break;
      case '--group': args.group = value; break;
      case '--ip': args.ip = value; break;
      case '--port': args.port = Number(value); break;
      case '--timeout-s': args.timeoutMs = Number(value) * 1000; break;
      case '--lease-ms': {
        const parts = value.split(',').map(Number);
        if (parts.length !== 3 || parts.some(isNaN)) usage();
        args.leaseMs = parts;
        break;
      }
      default: usage();
    }
  }
  if (!args.write || !args.service || !Number.isInteger(args.port)) usage();
  if (args.mode === 'roundtrip' && !args.read) usage();
  return args;
}

// With NACOS_USERNAME and NACOS_PASSWORD in the environment the client sends them with every
// request (it has no login call of its own).
async function connect(addr) {
  const options = { logger, serverList: addr, namespace: 'public' };
  if (process.env.NACOS_USERNAME && process.env.NACOS_PASSWORD) {
    options.username = process.env.NACOS_USERNAME;
    options.password = process.env.NACOS_PASSWORD;
  }
  const client = new NacosNamingClient(options);
  await client.ready();
  return client;
}

function instance(args, port, leaseMs) {
  const metadata = { client: CLIENT };
  if (leaseMs) {
    metadata['preserved.heart.beat.interval'] = String(leaseMs[0]);
    metadata['preserved.heart.beat.timeout'] = String(leaseMs[1]);
    metadata['preserved.ip.delete.timeout'] = String(leaseMs[2]);
  }
  return { ip: args.ip, port, metadata };
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));
const portsOf = hosts => (hosts || []).map(h => h.port).sort((a, b) => a - b);
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// Queries instance/list directly (no cache) until exactly `want` ports are there.
async function readUntil(client, args, want) {
  const deadline = Date.now() + args.timeoutMs;
  let last = 'no answer yet';
  for (;;) {
    try {
      const hosts = await client.getAllInstances(args.service, args.group, '', false);
      if (same(portsOf(hosts), want)) return hosts;
      last = 'ports ' + JSON.stringify(portsOf(hosts));
    } catch (err) {
      last = String(err.message || err);
    }
    if (Date.now() >= deadline) throw new Error(`wanted ports ${JSON.stringify(want)}, last saw ${last}`);
    await sleep(200);
  }
}

async function waitFor(events, want, args) {
  const deadline = Date.now() + args.timeoutMs;
  while (!(events.length && same(events[events.length - 1], want))) {
    if (Date.now() >= deadline) {
      throw new Error(`wanted ports ${JSON.stringify(want)}, events ${JSON.stringify(events)}`);
    }
    await sleep(100);
  }
}

async function roundtrip(args) {
  let writer;
  let reader;
  try {
    writer = await connect(args.write);
    reader = await connect(args.read);
    const status = await reader.getServerStatus();
    if (status !== 'UP') throw new Error(`server status ${status}`);
  } catch (err) { fail('connect', err); }
  emit('connect', true, { write: args.write, read: args.read });

  const p1 = args.port;
  const p2 = args.port + 1;
  try {
    await writer.registerInstance(args.service, instance(args, p1), args.group);
    await writer.registerInstance(args.service, instance(args, p2), args.group);
  } catch (err) { fail('register', err); }
  emit('register', true, { ports: [ p1, p2 ] });

  let hosts;
  try {
    hosts = await readUntil(reader, args, [ p1, p2 ]);
  } catch (err) { fail('read', err); }
  const first = hosts[0];
  emit('read', true, {
    ports: [ p1, p2 ],
    healthy: first.healthy,
    enabled: first.enabled,
    ephemeral: first.ephemeral,
    cluster: first.clusterName,
    service_name: first.serviceName,
    instance_id: first.instanceId,
    metadata_client: (first.metadata || {}).client,
  });

  const events = [];
  try {
    reader.subscribe({ serviceName: args.service, groupName: args.group }, h => events.push(portsOf(h)));
    await waitFor(events, [ p1, p2 ], args);
  } catch (err) { fail('subscribe', err); }
  emit('subscribe', true, { ports: [ p1, p2 ] });

  try {
    await writer.deregisterInstance(args.service, instance(args, p2), args.group);
  } catch (err) { fail('deregister_one', err); }
  emit('deregister_one', true, { port: p2 });
  try {
    await readUntil(reader, args, [ p1 ]);
  } catch (err) { fail('read_after_deregister', err); }
  emit('read_after_deregister', true, { ports: [ p1 ] });
  // The subscription polls instance/list every cacheMillis of the server's answer.
  try {
    await waitFor(events, [ p1 ], args);
  } catch (err) { fail('push_after_deregister', err); }
  emit('push_after_deregister', true, { ports: [ p1 ] });

  try {
    await writer.deregisterInstance(args.service, instance(args, p1), args.group);
  } catch (err) { fail('deregister', err); }
  emit('deregister', true, { port: p1 });
  await writer.close();
  await reader.close();
  emit('done', true);
  process.exit(0);
}

async function hold(args) {
  let writer;
  try {
    writer = await connect(args.write);
    await writer.registerInstance(args.service, instance(args, args.port, args.leaseMs), args.group);
  } catch (err) { fail('register', err); }
  emit('registered', true, { service: args.service, port: args.port, pid: process.pid });
  // Keep beating until the test kills this process. Should the test die first, its end of our
  // stdin closes and we go too, without deregistering.
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
  setTimeout(() => fail('hold', `not killed within ${HOLD_MAX_MS} ms`), HOLD_MAX_MS);
}

const args = parseArgs(process.argv.slice(2));
if (args.mode === 'hold') {
  hold(args);
} else {
  // A bound on the whole run, so that a wedged client never outlives its test.
  setTimeout(() => fail('timeout', 'the run took too long'), args.timeoutMs * 10).unref();
  roundtrip(args).catch(err => fail('roundtrip', err));
}
