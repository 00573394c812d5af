// End-to-end: official MCP SDK clients connect through dcr-proxy (authorization code + PKCE, consent, OIDC login
// at oauth2-mock-server) to an MCP server built with the TypeScript SDK, and call a tool that reports the
// Authorization header the MCP server received. Modes:
//   dcr     TypeScript SDK client, Dynamic Client Registration, then an SDK-driven refresh;
//   cimd    TypeScript SDK client with a Client ID Metadata Document (served here over TLS on 127.0.0.1);
//   cimd-jwt  the same with a ChatGPT-style document: token_endpoint_auth_method private_key_jwt, RS256, a jwks_uri;
//           the SDK signs its client assertions with createPrivateKeyJwtAuth (its auth-extensions);
//   legacy  TypeScript SDK client as a 2025-03-26 client: every /.well-known/ request fails, so it falls back to
//           /register, /authorize and /token at the server's origin and sends no `resource`;
//   python  the Python SDK client (PyPI `mcp`, e2e/python_client.py) with DCR.
//
// Usage: node sdk_flow.mjs <path to the dcr-proxy binary>
// Environment: E2E_CIMD_CERT / E2E_CIMD_KEY (PEM files for 127.0.0.1, required), E2E_PYTHON (a Python with the
// pinned `mcp`; the python mode is skipped with a message when unset), E2E_MODES (comma list; default all).
// Replicas (issue 12): E2E_REPLICAS=N (N > 1) with E2E_REDIS_URL and E2E_STORE_KEY starts N proxies sharing that
// Redis behind a round-robin TCP balancer (per connection) on the public origin, and makes every request of the
// SDK and of the browser leg a connection of its own (`Connection: close`), so consecutive requests land on
// different replicas; it prints the connections each replica served and fails unless every one served some.
// Everything binds 127.0.0.1 on ephemeral ports. Exit code 0 means every mode passed.

import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

import { OAuth2Server } from 'oauth2-mock-server';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { createPrivateKeyJwtAuth } from '@modelcontextprotocol/sdk/client/auth-extensions.js';
import { createPublicKey } from 'node:crypto';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';

const proxyBinary = process.argv[2];
const cimdCert = process.env.E2E_CIMD_CERT;
const cimdKey = process.env.E2E_CIMD_KEY;
if (!proxyBinary || !cimdCert || !cimdKey) {
  console.error('usage: E2E_CIMD_CERT=cert.pem E2E_CIMD_KEY=key.pem node sdk_flow.mjs <dcr-proxy binary>');
  process.exit(2);
}
const modes = (process.env.E2E_MODES ?? 'dcr,cimd,cimd-jwt,legacy,python').split(',');

const log = (...args) => console.log('[e2e]', ...args);

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
// Name the issuer by address, not `localhost`, so that nothing ever resolves a name.
idp.issuer.url = `http://127.0.0.1:${idp.address().port}`;
const idpUrl = idp.issuer.url;
const idpAccessTokens = [];
idp.service.on('beforeResponse', (response) => {
  if (response.body && response.body.access_token) idpAccessTokens.push(response.body.access_token);
});
log('IdP at', idpUrl);

// ---- the MCP server (stateless Streamable HTTP) ------------------------------------------------------------
let lastAuthorization = null;
const mcpHttp = http.createServer(async (req, res) => {
  lastAuthorization = req.headers['authorization'] ?? null;
  if (req.method !== 'POST') {
    res.writeHead(405, { allow: 'POST' }).end();
    return;
  }
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  const server = new McpServer({ name: 'whoami-server', version: '1.0.0' });
  server.registerTool('whoami', { description: 'Reports the Authorization header the MCP server received' }, async () => ({
    content: [{ type: 'text', text: String(lastAuthorization) }],
  }));
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
  res.on('close', () => {
    transport.close();
    server.close();
  });
  await server.connect(transport);
  await transport.handleRequest(req, res, body);
});
await new Promise((r) => mcpHttp.listen(0, '127.0.0.1', r));
const mcpUrl = `http://127.0.0.1:${mcpHttp.address().port}`;
log('MCP server at', mcpUrl);

// ---- the client metadata document (CIMD mode), https on 127.0.0.1 ----------------------------------------
const REDIRECT_URL = 'http://127.0.0.1:33418/callback';
let documentFetches = 0;
let jwksFetches = 0;
// The private_key_jwt client's RSA key (a test-only fixture) and its public JWK.
const jwtClientKeyPem = readFileSync(new URL('../tests/fixtures/client_rsa2_pkcs8.pem', import.meta.url), 'utf8');
const jwtClientJwk = { ...createPublicKey(jwtClientKeyPem).export({ format: 'jwk' }), kid: 'e2e-k1', use: 'sig', alg: 'RS256' };
const docServer = https.createServer({ cert: readFileSync(cimdCert), key: readFileSync(cimdKey) }, (req, res) => {
  const url = `https://127.0.0.1:${docServer.address().port}${req.url}`;
  const json = (doc) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(doc));
  const document = (name, auth) => ({
    client_id: url,
    client_name: name,
    redirect_uris: [REDIRECT_URL],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    ...auth,
  });
  if (req.url === '/clients/e2e-cimd.json') {
    documentFetches += 1;
    json(document('e2e CIMD client', { token_endpoint_auth_method: 'none' }));
  } else if (req.url === '/clients/e2e-cimd-jwt.json') {
    documentFetches += 1;
    json(
      document('e2e CIMD JWT client', {
        token_endpoint_auth_method: 'private_key_jwt',
        token_endpoint_auth_methods_supported: ['none', 'private_key_jwt'],
        token_endpoint_auth_signing_alg: 'RS256',
        jwks_uri: `https://127.0.0.1:${docServer.address().port}/clients/jwks.json`,
      }),
    );
  } else if (req.url === '/clients/jwks.json') {
    jwksFetches += 1;
    json({ keys: [jwtClientJwk] });
  } else {
    res.writeHead(404).end();
  }
});
await new Promise((r) => docServer.listen(0, '127.0.0.1', r));
const documentUrl = `https://127.0.0.1:${docServer.address().port}/clients/e2e-cimd.json`;
const jwtDocumentUrl = `https://127.0.0.1:${docServer.address().port}/clients/e2e-cimd-jwt.json`;
log('client metadata document at', documentUrl);

// ---- dcr-proxy (one, or N replicas behind a round-robin balancer) -----------------------------------------
const replicas = Number(process.env.E2E_REPLICAS ?? '1');
const balancerCounts = [];
let balancer = null;
let port;
if (replicas > 1) {
  assert.ok(process.env.E2E_REDIS_URL && process.env.E2E_STORE_KEY, 'E2E_REPLICAS needs E2E_REDIS_URL and E2E_STORE_KEY');
  // Round robin per connection: each accepted connection is piped, byte for byte, to the next replica.
  const backendPorts = [];
  let next = 0;
  balancer = net.createServer((sock) => {
    const i = next++ % replicas;
    balancerCounts[i] += 1;
    const up = net.connect(backendPorts[i], '127.0.0.1');
    sock.pipe(up).on('error', () => sock.destroy());
    up.pipe(sock).on('error', () => up.destroy());
    sock.on('error', () => up.destroy());
    up.on('error', () => sock.destroy());
  });
  for (let i = 0; i < replicas; i++) {
    backendPorts.push(await freePort());
    balancerCounts.push(0);
  }
  balancer.backendPorts = backendPorts;
  await new Promise((r) => balancer.listen(0, '127.0.0.1', r));
  port = balancer.address().port;
} else {
  port = await freePort();
}
const proxyUrl = `http://127.0.0.1:${port}`;
const dir = mkdtempSync(join(tmpdir(), 'dcr-proxy-e2e-'));
const configText = (listenPort) => `[server]
listen = "127.0.0.1:${listenPort}"
public_url = "${proxyUrl}"
shutdown_grace = "1s"
[upstream]
url = "${mcpUrl}"
resource_path = "/mcp"
[idp]
kind = "oidc"
issuer = "${idpUrl}"
client_id = "dcr-proxy-e2e"
client_secret = "e2e-secret"
scopes = ["openid", "profile", "email", "offline_access"]
[client_metadata_documents]
# The document is served on loopback by this script: test-only switch, and its self-signed certificate trusted.
allow_loopback_for_testing = true
extra_ca_file = "${cimdCert}"
[log]
filter = "${replicas > 1 ? 'warn' : 'info'}"
# A tool policy, so that every MCP POST of the 1.x and Python clients is read and judged on its way (whoami is
# allowed; the 1.x clients send no Mcp-Method / Mcp-Name headers).
[[policy.tools]]
match = "delete_*"
groups = ["admins"]
${replicas > 1 ? `[store]\nbackend = "redis"\nredis_url = "${process.env.E2E_REDIS_URL}"\n` : ''}`;
const listenPorts = replicas > 1 ? balancer.backendPorts : [port];
const proxies = listenPorts.map((listenPort, i) => {
  const configPath = join(dir, `proxy-${i}.toml`);
  writeFileSync(configPath, configText(listenPort));
  const env = replicas > 1 ? { ...process.env, DCR_PROXY_SNAPSHOT_KEY: process.env.E2E_STORE_KEY } : process.env;
  const child = spawn(proxyBinary, ['--config', configPath], { stdio: ['ignore', 'inherit', 'inherit'], env });
  child.exited = false;
  child.on('exit', (code) => {
    child.exited = true;
    if (code !== 0 && code !== null) log(`dcr-proxy ${i} exited with`, code);
  });
  return child;
});
const proxyExited = () => proxies.some((p) => p.exited);

/// With replicas, every request is a connection of its own, so that the balancer spreads consecutive requests.
function churn(init) {
  if (replicas <= 1) return init;
  const headers = new Headers(init?.headers);
  headers.set('connection', 'close');
  return { ...init, headers };
}

async function cleanup() {
  for (const p of proxies) if (!p.exited) p.kill('SIGTERM');
  balancer?.close();
  mcpHttp.close();
  docServer.close();
  await idp.stop();
}

async function waitForProxy() {
  for (let i = 0; i < 200; i++) {
    if (proxyExited()) throw new Error('dcr-proxy exited during start');
    try {
      const ready = await Promise.all(listenPorts.map((p) => fetch(`http://127.0.0.1:${p}/readyz`, churn({}))));
      if (ready.every((r) => r.ok)) return;
    } catch {
      /* not yet listening */
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('dcr-proxy did not become healthy');
}

// ---- the browser leg: follow redirects, keep cookies, approve consent --------------------------------------
async function browse(startUrl, expectedClientName) {
  const cookies = new Map();
  const cookieHeader = () => [...cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  const keep = (res) => {
    for (const c of res.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const i = pair.indexOf('=');
      cookies.set(pair.slice(0, i), pair.slice(i + 1));
    }
  };
  let res = await fetch(startUrl, churn({ redirect: 'manual' }));
  for (let hop = 0; hop < 10; hop++) {
    keep(res);
    if (res.status >= 300 && res.status < 400) {
      const location = new URL(res.headers.get('location'), res.url || startUrl).toString();
      if (location.startsWith(REDIRECT_URL)) return new URL(location);
      assert.ok(location.startsWith('http://127.0.0.1:'), `browser would leave loopback: ${location}`);
      res = await fetch(location, churn({ redirect: 'manual', headers: { cookie: cookieHeader() } }));
      continue;
    }
    const html = await res.text();
    assert.equal(res.status, 200, `unexpected page ${res.status}: ${html}`);
    const field = (name) => html.match(new RegExp(`name="${name}" value="([^"]*)"`))[1];
    assert.ok(html.includes(expectedClientName), `the consent page names the client: ${html}`);
    res = await fetch(
      `${proxyUrl}/consent`,
      churn({
        method: 'POST',
        redirect: 'manual',
        headers: { cookie: cookieHeader(), 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ request: field('request'), csrf: field('csrf'), action: 'approve' }),
      }),
    );
  }
  throw new Error('too many redirects');
}

class TestProvider {
  constructor(clientName, clientMetadataUrl, addClientAuthentication) {
    this.clientName = clientName;
    this.clientMetadataUrl = clientMetadataUrl;
    // private_key_jwt: the SDK's assertion signer (audience: the authorization server's issuer).
    if (addClientAuthentication) this.addClientAuthentication = addClientAuthentication;
    this._client = undefined;
    this._tokens = undefined;
    this._verifier = undefined;
    this.authorizationUrl = undefined;
    this.authorizationCode = undefined;
    this.callbackParams = undefined;
  }
  get redirectUrl() {
    return REDIRECT_URL;
  }
  get clientMetadata() {
    return {
      client_name: this.clientName,
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
    this.authorizationUrl = new URL(url);
    const landed = await browse(url.toString(), this.clientName);
    this.callbackParams = landed.searchParams;
    this.authorizationCode = landed.searchParams.get('code');
  }
  saveCodeVerifier(v) {
    this._verifier = v;
  }
  codeVerifier() {
    return this._verifier;
  }
}

/// A fetch for the SDK that records the paths it asks for; in legacy mode every /.well-known/ request fails as
/// it would on a 2025-03-26 server without discovery documents.
function recordingFetch(mode, paths) {
  return async (input, init) => {
    const url = new URL(typeof input === 'string' || input instanceof URL ? input : input.url);
    paths.push(url.pathname);
    if (mode === 'legacy' && url.pathname.startsWith('/.well-known/')) {
      return new Response('not found', { status: 404 });
    }
    return fetch(input, churn(init));
  };
}

async function typescriptClient(mode) {
  const names = { dcr: 'e2e SDK client', cimd: 'e2e CIMD client', 'cimd-jwt': 'e2e CIMD JWT client', legacy: 'e2e legacy client' };
  const documents = { cimd: documentUrl, 'cimd-jwt': jwtDocumentUrl };
  const signer =
    mode === 'cimd-jwt'
      ? createPrivateKeyJwtAuth({ issuer: jwtDocumentUrl, subject: jwtDocumentUrl, privateKey: jwtClientKeyPem, alg: 'RS256' })
      : undefined;
  const provider = new TestProvider(names[mode], documents[mode], signer);
  const tokenBodies = [];
  const signedFetch = (inner) => async (input, init) => {
    const url = new URL(typeof input === 'string' || input instanceof URL ? input : input.url);
    if (url.pathname === '/token') tokenBodies.push(String(init?.body ?? ''));
    return inner(input, init);
  };
  const paths = [];
  const options = () => ({ authProvider: provider, fetch: signedFetch(recordingFetch(mode, paths)) });
  const fetchesBefore = documentFetches;
  const client = new Client({ name: `e2e-${mode}`, version: '1.0.0' });
  try {
    await client.connect(new StreamableHTTPClientTransport(new URL(`${proxyUrl}/mcp`), options()));
    throw new Error('connect succeeded without authorization');
  } catch (e) {
    if (!(e instanceof UnauthorizedError)) throw e;
  }
  const clientId = provider.clientInformation()?.client_id;
  assert.ok(clientId, 'the SDK has a client_id');
  assert.ok(provider.authorizationCode, `no authorization code; redirect params: ${provider.callbackParams}`);
  assert.equal(provider.callbackParams.get('iss'), proxyUrl, 'RFC 9207 iss');

  const transport = new StreamableHTTPClientTransport(new URL(`${proxyUrl}/mcp`), options());
  await transport.finishAuth(provider.authorizationCode);
  const proxyToken = provider.tokens().access_token;
  assert.ok(proxyToken, 'the SDK holds the proxy access token');

  const connected = new Client({ name: `e2e-${mode}`, version: '1.0.0' });
  await connected.connect(new StreamableHTTPClientTransport(new URL(`${proxyUrl}/mcp`), options()));
  const tools = await connected.listTools();
  assert.deepEqual(tools.tools.map((t) => t.name), ['whoami']);
  const result = await connected.callTool({ name: 'whoami', arguments: {} });
  const seen = result.content[0].text;
  assert.equal(seen, `Bearer ${idpAccessTokens[idpAccessTokens.length - 1]}`, 'the MCP server got the IdP token');
  assert.ok(!seen.includes(proxyToken), 'the proxy token never reaches the MCP server');

  if (mode === 'dcr') {
    assert.ok(!clientId.startsWith('https://'), 'a registered client_id');
    assert.ok(paths.includes('/register'), 'registered with DCR');
    assert.ok(paths.includes('/.well-known/oauth-protected-resource/mcp'), 'RFC 9728 discovery');
    // A refresh through the SDK's own refresh path: drop the access token and keep the refresh token.
    provider.saveTokens({ ...provider.tokens(), access_token: 'expired-or-unknown' });
    const again = new Client({ name: 'e2e-dcr', version: '1.0.0' });
    await again.connect(new StreamableHTTPClientTransport(new URL(`${proxyUrl}/mcp`), options()));
    const second = await again.callTool({ name: 'whoami', arguments: {} });
    assert.ok(second.content[0].text.startsWith('Bearer '), 'tool works after the SDK refreshed its token');
    assert.notEqual(provider.tokens().access_token, 'expired-or-unknown', 'the SDK refreshed');
    await again.close();
    log('dcr: refresh through the SDK works');
  } else if (mode === 'cimd') {
    assert.equal(clientId, documentUrl, 'the client_id is the metadata document URL');
    assert.ok(!paths.includes('/register'), 'no registration with a metadata document');
    assert.ok(documentFetches > fetchesBefore, 'the proxy fetched the document');
  } else if (mode === 'cimd-jwt') {
    assert.equal(clientId, jwtDocumentUrl, 'the client_id is the metadata document URL');
    assert.ok(!paths.includes('/register'), 'no registration with a metadata document');
    assert.ok(jwksFetches > 0, 'the proxy fetched the client keys from the jwks_uri');
    assert.ok(tokenBodies.length > 0 && tokenBodies.every((b) => b.includes('client_assertion=')), 'signed token requests');
    // A refresh through the SDK, signed again with a new jti.
    provider.saveTokens({ ...provider.tokens(), access_token: 'expired-or-unknown' });
    const again = new Client({ name: 'e2e-cimd-jwt', version: '1.0.0' });
    await again.connect(new StreamableHTTPClientTransport(new URL(`${proxyUrl}/mcp`), options()));
    const second = await again.callTool({ name: 'whoami', arguments: {} });
    assert.ok(second.content[0].text.startsWith('Bearer '), 'tool works after the signed refresh');
    assert.notEqual(provider.tokens().access_token, 'expired-or-unknown', 'the SDK refreshed');
    await again.close();
    log('cimd-jwt: code and refresh authenticated with private_key_jwt assertions');
  } else if (mode === 'legacy') {
    assert.ok(paths.some((p) => p.startsWith('/.well-known/')), 'the SDK tried discovery and was refused');
    for (const p of ['/register', '/token']) assert.ok(paths.includes(p), `legacy default endpoint ${p} used`);
    assert.equal(provider.authorizationUrl.pathname, '/authorize', 'legacy default /authorize');
    assert.equal(provider.authorizationUrl.searchParams.get('resource'), null, 'no resource without RFC 9728');
  }
  await connected.close();
  log(`${mode}: tool call reached the MCP server with the IdP token (client_id ${clientId})`);
}

async function pythonClient() {
  const python = process.env.E2E_PYTHON;
  if (!python) throw new Error('E2E_PYTHON is not set: no Python with the pinned mcp package');
  const tokensBefore = idpAccessTokens.length;
  const here = new URL('.', import.meta.url).pathname;
  const { stdout } = await new Promise((resolve, reject) => {
    execFile(python, [join(here, 'python_client.py'), `${proxyUrl}/mcp`], { timeout: 120_000 }, (err, stdout, stderr) =>
      err ? reject(new Error(`python client failed: ${err.message}\n${stdout}\n${stderr}`)) : resolve({ stdout }),
    );
  });
  const line = stdout.split('\n').find((l) => l.startsWith('RESULT '));
  assert.ok(line, `no RESULT line from the Python client:\n${stdout}`);
  const r = JSON.parse(line.slice('RESULT '.length));
  assert.ok(r.client_id && !r.client_id.startsWith('https://'), 'the Python SDK registered with DCR');
  assert.ok(r.consent_seen, 'the Python client went through the consent page');
  assert.equal(r.iss, proxyUrl, 'RFC 9207 iss');
  assert.deepEqual(r.tools, ['whoami']);
  const fresh = idpAccessTokens.slice(tokensBefore).map((t) => `Bearer ${t}`);
  assert.ok(fresh.includes(r.authorization_seen_by_server), 'the MCP server got the IdP token of this login');
  assert.ok(!r.authorization_seen_by_server.includes(r.access_token), 'the proxy token never reaches the MCP server');
  log(`python: tool call reached the MCP server with the IdP token (client_id ${r.client_id})`);
}

let passed = 0;
let failed = 0;
try {
  await waitForProxy();
  for (const mode of modes) {
    try {
      if (mode === 'python') await pythonClient();
      else await typescriptClient(mode);
      passed += 1;
      console.log(`[e2e] mode ${mode}: ok`);
    } catch (e) {
      failed += 1;
      console.error(`[e2e] mode ${mode} FAILED:`, e);
    }
  }
} catch (e) {
  failed += 1;
  console.error('[e2e] FAILED:', e);
} finally {
  await cleanup();
}
if (replicas > 1) {
  log(`balancer connections per replica: ${balancerCounts.join(',')}`);
  if (!balancerCounts.every((n) => n > 0)) {
    console.error('[e2e] FAILED: a replica served no connection');
    failed += 1;
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
