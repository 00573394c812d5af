// End-to-end, both SDK generations through one dcr-proxy with a tool policy and a short upstream.response_timeout,
// with oauth2-mock-server as the OIDC IdP:
// - MCP 2026-07-28: the 2.x client (@modelcontextprotocol/client) against a 2.x server (@modelcontextprotocol/server,
//   createMcpHandler, modern era only): sign-in (RFC 9728 discovery, DCR with application_type, PKCE, consent,
//   iss), tool calls carrying Mcp-Method / Mcp-Name through the tool policy, tools/list narrowed, a refused call,
//   a `subscriptions/listen` stream silent for longer than upstream.response_timeout that then delivers a
//   notification, and a refresh through the SDK;
// - MCP 2025-11-25: the 1.32 client against a sessionful 1.32 server (the same MCP endpoint, routed by
//   MCP-Protocol-Version): sign-in, narrowed tools/list, a tool call, and the GET notification stream silent for
//   longer than upstream.response_timeout that then delivers a notification.
//
// Usage: node sdk2_flow.mjs <path to the dcr-proxy binary>. Everything binds 127.0.0.1 on ephemeral ports.
// Exit code 0 means every check passed.

import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

import { OAuth2Server } from 'oauth2-mock-server';
import { Client, StreamableHTTPClientTransport, UnauthorizedError } from '@modelcontextprotocol/client';
import { McpServer, createMcpHandler } from '@modelcontextprotocol/server';
import { randomUUID } from 'node:crypto';
import { Client as Client1 } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport as Transport1 } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError as Unauthorized1 } from '@modelcontextprotocol/sdk/client/auth.js';
import { McpServer as McpServer1 } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport as ServerTransport1 } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest, ToolListChangedNotificationSchema } from '@modelcontextprotocol/sdk/types.js';

const proxyBinary = process.argv[2];
if (!proxyBinary) {
  console.error('usage: node sdk2_flow.mjs <dcr-proxy binary>');
  process.exit(2);
}
const log = (...args) => console.log('[e2e2]', ...args);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// upstream.response_timeout of the proxy, and how long the listen stream stays silent (longer).
const RESPONSE_TIMEOUT_MS = 1000;
const SILENCE_MS = 2500;
// The 2.x client talks 2026-07-28 only when asked to (its default is the 2025-11-25 handshake).
const MODERN = { versionNegotiation: { mode: { pin: '2026-07-28' } } };

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

// ---- the OIDC identity provider ----------------------------------------------------------------------------
const idp = new OAuth2Server();
await idp.issuer.keys.generate('RS256');
await idp.start(0, '127.0.0.1');
idp.issuer.url = `http://127.0.0.1:${idp.address().port}`;
const idpAccessTokens = [];
idp.service.on('beforeResponse', (response) => {
  if (response.body && response.body.access_token) idpAccessTokens.push(response.body.access_token);
});

// ---- the MCP server: 2.x SDK, 2026-07-28 only, no keep-alive comments on streams ---------------------------
let lastAuthorization = null;
const upstreamCalls = [];
let upstreamGetCount = 0;
const upstreamGets = () => upstreamGetCount > 0;
const handler = createMcpHandler(
  () => {
    const server = new McpServer({ name: 'whoami-server-2', version: '2.0.0' });
    server.registerTool('whoami', { description: 'Reports the Authorization header the MCP server received' }, async () => ({
      content: [{ type: 'text', text: String(lastAuthorization) }],
    }));
    server.registerTool('delete_everything', { description: 'Only for admins (the proxy policy)' }, async () => ({
      content: [{ type: 'text', text: 'deleted' }],
    }));
    return server;
  },
  { legacy: 'reject', keepAliveMs: 0 },
);
const mcpHttp = http.createServer(async (req, res) => {
  lastAuthorization = req.headers['authorization'] ?? null;
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const body = Buffer.concat(chunks);
  if (req.method === 'GET') upstreamGetCount += 1;
  upstreamCalls.push({ method: req.headers['mcp-method'], name: req.headers['mcp-name'], body: body.toString('utf8') });
  if (req.headers['mcp-protocol-version'] !== '2026-07-28' && !body.includes('io.modelcontextprotocol/protocolVersion')) {
    await legacyServe(req, res, body);
    return;
  }
  const headers = new Headers();
  for (const [k, v] of Object.entries(req.headers)) {
    if (['host', 'connection', 'keep-alive', 'transfer-encoding', 'content-length'].includes(k)) continue;
    for (const one of Array.isArray(v) ? v : [v]) headers.append(k, one);
  }
  const request = new Request(`http://127.0.0.1${req.url}`, {
    method: req.method,
    headers,
    body: req.method === 'POST' || req.method === 'PUT' ? body : undefined,
  });
  const response = await handler.fetch(request);
  res.writeHead(response.status, Object.fromEntries(response.headers));
  res.flushHeaders();
  if (response.body) {
    const reader = response.body.getReader();
    res.on('close', () => reader.cancel().catch(() => {}));
    for (;;) {
      const { done, value } = await reader.read().catch(() => ({ done: true }));
      if (done) break;
      res.write(value);
    }
  }
  res.end();
});
// The 2025-11-25 leg: a sessionful 1.32 server, so that the client opens its GET notification stream.
const sessions = new Map();
async function legacyServe(req, res, body) {
  const parsed = body.length ? JSON.parse(body.toString('utf8')) : undefined;
  const sid = req.headers['mcp-session-id'];
  if (sid && sessions.has(sid)) {
    await sessions.get(sid).transport.handleRequest(req, res, parsed);
    return;
  }
  if (req.method === 'POST' && isInitializeRequest(parsed)) {
    const server = new McpServer1({ name: 'whoami-server-1', version: '1.32.2' });
    server.registerTool('whoami', { description: 'Reports the Authorization header' }, async () => ({
      content: [{ type: 'text', text: String(lastAuthorization) }],
    }));
    server.registerTool('delete_everything', { description: 'Only for admins (the proxy policy)' }, async () => ({
      content: [{ type: 'text', text: 'deleted' }],
    }));
    const transport = new ServerTransport1({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => sessions.set(id, { transport, server }),
    });
    await server.connect(transport);
    await transport.handleRequest(req, res, parsed);
    return;
  }
  res.writeHead(400).end();
}
await new Promise((r) => mcpHttp.listen(0, '127.0.0.1', r));
const mcpUrl = `http://127.0.0.1:${mcpHttp.address().port}`;

// ---- dcr-proxy: short upstream.response_timeout, a tool policy no user of this IdP satisfies -----------------
const REDIRECT_URL = 'http://127.0.0.1:33419/callback';
const port = await freePort();
const proxyUrl = `http://127.0.0.1:${port}`;
const dir = mkdtempSync(join(tmpdir(), 'dcr-proxy-e2e2-'));
const configPath = join(dir, 'proxy.toml');
writeFileSync(
  configPath,
  `[server]
listen = "127.0.0.1:${port}"
public_url = "${proxyUrl}"
shutdown_grace = "1s"
[upstream]
url = "${mcpUrl}"
resource_path = "/mcp"
response_timeout = "${RESPONSE_TIMEOUT_MS / 1000}s"
[idp]
kind = "oidc"
issuer = "${idp.issuer.url}"
client_id = "dcr-proxy-e2e2"
client_secret = "e2e-secret"
scopes = ["openid", "profile", "email", "offline_access"]
[log]
filter = "info"
[[policy.tools]]
match = "delete_*"
groups = ["admins"]
`,
);
const proxy = spawn(proxyBinary, ['--config', configPath], { stdio: ['ignore', 'inherit', 'inherit'] });
let proxyExited = false;
proxy.on('exit', (code) => {
  proxyExited = true;
  if (code !== 0 && code !== null) log('dcr-proxy exited with', code);
});

async function waitForProxy() {
  for (let i = 0; i < 200; i++) {
    if (proxyExited) throw new Error('dcr-proxy exited during start');
    try {
      if ((await fetch(`${proxyUrl}/healthz`)).ok) return;
    } catch {
      /* not yet listening */
    }
    await sleep(50);
  }
  throw new Error('dcr-proxy did not become healthy');
}

// ---- the browser leg ----------------------------------------------------------------------------------------
async function browse(startUrl) {
  const cookies = new Map();
  const cookieHeader = () => [...cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  const keep = (res) => {
    for (const c of res.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const i = pair.indexOf('=');
      cookies.set(pair.slice(0, i), pair.slice(i + 1));
    }
  };
  let res = await fetch(startUrl, { redirect: 'manual' });
  for (let hop = 0; hop < 10; hop++) {
    keep(res);
    if (res.status >= 300 && res.status < 400) {
      const location = new URL(res.headers.get('location'), res.url || startUrl).toString();
      if (location.startsWith(REDIRECT_URL)) return new URL(location);
      assert.ok(location.startsWith('http://127.0.0.1:'), `browser would leave loopback: ${location}`);
      res = await fetch(location, { redirect: 'manual', headers: { cookie: cookieHeader() } });
      continue;
    }
    const html = await res.text();
    assert.equal(res.status, 200, `unexpected page ${res.status}: ${html}`);
    const field = (name) => html.match(new RegExp(`name="${name}" value="([^"]*)"`))[1];
    res = await fetch(`${proxyUrl}/consent`, {
      method: 'POST',
      redirect: 'manual',
      headers: { cookie: cookieHeader(), 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ request: field('request'), csrf: field('csrf'), action: 'approve' }),
    });
  }
  throw new Error('too many redirects');
}

class TestProvider {
  constructor() {
    this._client = undefined;
    this._tokens = undefined;
    this._verifier = undefined;
    this.callbackParams = undefined;
    this.registered = undefined;
  }
  get redirectUrl() {
    return REDIRECT_URL;
  }
  get clientMetadata() {
    return {
      client_name: 'e2e SDK 2.x client',
      redirect_uris: [REDIRECT_URL],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }
  clientInformation() {
    return this._client;
  }
  saveClientInformation(info) {
    this._client = info;
  }
  tokens() {
    return this._tokens;
  }
  saveTokens(tokens) {
    this._tokens = tokens;
  }
  async redirectToAuthorization(url) {
    const landed = await browse(url.toString());
    this.callbackParams = landed.searchParams;
  }
  saveCodeVerifier(v) {
    this._verifier = v;
  }
  saveDiscoveryState(state) {
    this._discovery = state;
  }
  discoveryState() {
    return this._discovery;
  }
  codeVerifier() {
    return this._verifier;
  }
}

function recordingFetch(paths, registrations) {
  return async (input, init) => {
    const url = new URL(typeof input === 'string' || input instanceof URL ? input : input.url);
    paths.push(url.pathname);
    if (url.pathname === '/register' && init?.body) registrations.push(JSON.parse(init.body));
    return fetch(input, init);
  };
}

async function run() {
  const provider = new TestProvider();
  const paths = [];
  const registrations = [];
  const options = () => ({ authProvider: provider, fetch: recordingFetch(paths, registrations) });
  const mcpEndpoint = new URL(`${proxyUrl}/mcp`);

  // Sign-in: the first request is refused (401), the SDK discovers, registers and sends the browser.
  const first = new Client({ name: 'e2e-2x', version: '2.0.0' }, MODERN);
  try {
    await first.connect(new StreamableHTTPClientTransport(mcpEndpoint, options()));
    await first.listTools();
    throw new Error('the MCP endpoint answered without authorization');
  } catch (e) {
    if (!(e instanceof UnauthorizedError)) throw e;
  }
  assert.ok(paths.includes('/.well-known/oauth-protected-resource/mcp'), `RFC 9728 discovery: ${paths}`);
  assert.equal(registrations.length, 1, 'registered once with DCR');
  assert.equal(registrations[0].application_type, 'native', 'the 2.x SDK sends application_type (SEP-837)');
  assert.ok(provider.callbackParams?.get('code'), `no code: ${provider.callbackParams}`);
  assert.equal(provider.callbackParams.get('iss'), proxyUrl, 'RFC 9207 iss');
  const transport = new StreamableHTTPClientTransport(mcpEndpoint, options());
  await transport.finishAuth(provider.callbackParams);
  const proxyToken = provider.tokens().access_token;
  assert.ok(proxyToken && provider.tokens().refresh_token, 'access and refresh token');
  log('sign-in: ok, client_id', provider.clientInformation().client_id);

  // Tool calls, through the tool policy (the 2.x client sends Mcp-Method / Mcp-Name).
  const client = new Client({ name: 'e2e-2x', version: '2.0.0' }, MODERN);
  await client.connect(new StreamableHTTPClientTransport(mcpEndpoint, options()));
  const tools = await client.listTools();
  assert.deepEqual(tools.tools.map((t) => t.name), ['whoami'], 'tools/list narrowed by the policy');
  const result = await client.callTool({ name: 'whoami', arguments: {} });
  assert.equal(result.content[0].text, `Bearer ${idpAccessTokens[idpAccessTokens.length - 1]}`, 'IdP token upstream');
  assert.ok(!result.content[0].text.includes(proxyToken), 'the proxy token never reaches the MCP server');
  const call = upstreamCalls.find((c) => c.body.includes('"whoami"'));
  assert.equal(call?.method, 'tools/call', 'Mcp-Method reached the MCP server');
  assert.equal(call?.name, 'whoami', 'Mcp-Name reached the MCP server');
  let refused = null;
  try {
    await client.callTool({ name: 'delete_everything', arguments: {} });
  } catch (e) {
    refused = e;
  }
  assert.ok(refused, 'a call the policy refuses fails at the client');
  assert.ok(!upstreamCalls.some((c) => c.body.includes('delete_everything')), 'refused call never reached the server');
  log('tool calls: ok; refused call:', String(refused?.message ?? refused).slice(0, 160));

  // A listen stream: silent for longer than upstream.response_timeout, then a notification arrives on it.
  let notified = 0;
  client.setNotificationHandler('notifications/tools/list_changed', () => {
    notified += 1;
  });
  const subscription = await client.listen({ toolsListChanged: true });
  let closedHow = null;
  subscription.closed.then((how) => {
    closedHow = how;
  });
  await sleep(SILENCE_MS);
  assert.equal(closedHow, null, 'the listen stream is still open after the silence');
  handler.notify.toolsChanged();
  for (let i = 0; i < 100 && notified === 0; i++) await sleep(50);
  assert.equal(notified, 1, 'the notification arrived on the listen stream');
  await subscription.close();
  log(`listen: a notification arrived after ${SILENCE_MS} ms of silence (response_timeout ${RESPONSE_TIMEOUT_MS} ms)`);

  // Refresh through the SDK: an unknown access token, the refresh token kept.
  provider.saveTokens({ ...provider.tokens(), access_token: 'expired-or-unknown' });
  const again = new Client({ name: 'e2e-2x', version: '2.0.0' }, MODERN);
  await again.connect(new StreamableHTTPClientTransport(mcpEndpoint, options()));
  const second = await again.callTool({ name: 'whoami', arguments: {} });
  assert.ok(second.content[0].text.startsWith('Bearer '), 'tool works after the refresh');
  assert.notEqual(provider.tokens().access_token, 'expired-or-unknown', 'the SDK refreshed');
  await again.close();
  await client.close();
  log('refresh: ok');
}

async function runLegacyGeneration() {
  const provider = new TestProvider();
  const mcpEndpoint = new URL(`${proxyUrl}/mcp`);
  try {
    await new Client1({ name: 'e2e-1x', version: '1.0.0' }).connect(new Transport1(mcpEndpoint, { authProvider: provider }));
    throw new Error('connect succeeded without authorization');
  } catch (e) {
    if (!(e instanceof Unauthorized1)) throw e;
  }
  await new Transport1(mcpEndpoint, { authProvider: provider }).finishAuth(provider.callbackParams.get('code'));
  const client = new Client1({ name: 'e2e-1x', version: '1.0.0' });
  let notified = 0;
  client.setNotificationHandler(ToolListChangedNotificationSchema, () => {
    notified += 1;
  });
  await client.connect(new Transport1(mcpEndpoint, { authProvider: provider }));
  const tools = await client.listTools();
  assert.deepEqual(tools.tools.map((t) => t.name), ['whoami'], '1.x tools/list narrowed by the policy');
  const result = await client.callTool({ name: 'whoami', arguments: {} });
  assert.ok(result.content[0].text.startsWith('Bearer '), '1.x tool call reached the server');
  // The GET stream opens after `notifications/initialized`; wait for it, then stay silent past the timeout.
  for (let i = 0; i < 100 && !upstreamGets(); i++) await sleep(20);
  assert.ok(upstreamGets(), 'the 1.x client opened its GET notification stream');
  await sleep(SILENCE_MS);
  for (const { server } of sessions.values()) server.sendToolListChanged();
  for (let i = 0; i < 100 && notified === 0; i++) await sleep(50);
  assert.equal(notified, 1, 'the notification arrived on the GET stream');
  await client.close();
  log(`sdk 1.x: GET stream delivered a notification after ${SILENCE_MS} ms of silence`);
}

let failed = false;
try {
  await waitForProxy();
  await run();
  console.log('[e2e2] sdk 2.x: ok');
  await runLegacyGeneration();
  console.log('[e2e2] sdk 1.x: ok');
} catch (e) {
  failed = true;
  console.error('[e2e2] FAILED:', e);
} finally {
  if (!proxyExited) proxy.kill('SIGTERM');
  await handler.close().catch(() => {});
  mcpHttp.closeAllConnections?.();
  mcpHttp.close();
  await idp.stop();
}
process.exit(failed ? 1 : 0);
