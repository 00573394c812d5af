// End-to-end: the official MCP TypeScript SDK client connects through dcr-proxy (DCR, authorization code + PKCE,
// consent, OIDC login at oauth2-mock-server) to an MCP server built with the same SDK, and calls a tool that
// reports the Authorization header the MCP server received.
//
// Usage: node sdk_flow.mjs <path to the dcr-proxy binary>
// Everything binds 127.0.0.1 on ephemeral ports. Exit code 0 means every check passed.

import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import assert from 'node:assert/strict';

import { OAuth2Server } from 'oauth2-mock-server';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';

const proxyBinary = process.argv[2];
if (!proxyBinary) {
  console.error('usage: node sdk_flow.mjs <dcr-proxy binary>');
  process.exit(2);
}

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

// ---- dcr-proxy ---------------------------------------------------------------------------------------------
const port = await freePort();
const proxyUrl = `http://127.0.0.1:${port}`;
const dir = mkdtempSync(join(tmpdir(), 'dcr-proxy-e2e-'));
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
[idp]
kind = "oidc"
issuer = "${idpUrl}"
client_id = "dcr-proxy-e2e"
client_secret = "e2e-secret"
scopes = ["openid", "profile", "email", "offline_access"]
[log]
filter = "info"
`,
);
const proxy = spawn(proxyBinary, ['--config', configPath], { stdio: ['ignore', 'inherit', 'inherit'] });
let proxyExited = false;
proxy.on('exit', (code) => {
  proxyExited = true;
  if (code !== 0 && code !== null) log('dcr-proxy exited with', code);
});

async function cleanup() {
  if (!proxyExited) proxy.kill('SIGTERM');
  mcpHttp.close();
  await idp.stop();
}

async function waitForProxy() {
  for (let i = 0; i < 200; i++) {
    if (proxyExited) throw new Error('dcr-proxy exited during start');
    try {
      const r = await fetch(`${proxyUrl}/healthz`);
      if (r.ok) return;
    } catch {
      /* not yet listening */
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('dcr-proxy did not become healthy');
}

// ---- the browser leg: follow redirects, keep cookies, approve consent --------------------------------------
const REDIRECT_URL = 'http://127.0.0.1:33418/callback';

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
    assert.ok(html.includes('e2e SDK client'), 'the consent page names the client');
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
    this.authorizationCode = undefined;
    this.callbackParams = undefined;
  }
  get redirectUrl() {
    return REDIRECT_URL;
  }
  get clientMetadata() {
    return {
      client_name: 'e2e SDK client',
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
    this.authorizationCode = landed.searchParams.get('code');
  }
  saveCodeVerifier(v) {
    this._verifier = v;
  }
  codeVerifier() {
    return this._verifier;
  }
}

let failed = false;
try {
  await waitForProxy();
  const provider = new TestProvider();
  const client = new Client({ name: 'e2e-client', version: '1.0.0' });
  try {
    await client.connect(new StreamableHTTPClientTransport(new URL(`${proxyUrl}/mcp`), { authProvider: provider }));
    throw new Error('connect succeeded without authorization');
  } catch (e) {
    if (!(e instanceof UnauthorizedError)) throw e;
  }
  assert.ok(provider.clientInformation()?.client_id, 'the SDK registered itself with DCR');
  assert.ok(provider.authorizationCode, `no authorization code; redirect params: ${provider.callbackParams}`);
  assert.equal(provider.callbackParams.get('iss'), proxyUrl, 'RFC 9207 iss');
  log('registered', provider.clientInformation().client_id, 'and got a code');

  const transport = new StreamableHTTPClientTransport(new URL(`${proxyUrl}/mcp`), { authProvider: provider });
  await transport.finishAuth(provider.authorizationCode);
  const proxyToken = provider.tokens().access_token;
  assert.ok(proxyToken, 'the SDK holds the proxy access token');

  const connected = new Client({ name: 'e2e-client', version: '1.0.0' });
  await connected.connect(new StreamableHTTPClientTransport(new URL(`${proxyUrl}/mcp`), { authProvider: provider }));
  const tools = await connected.listTools();
  assert.deepEqual(tools.tools.map((t) => t.name), ['whoami']);
  const result = await connected.callTool({ name: 'whoami', arguments: {} });
  const seen = result.content[0].text;
  const idpToken = idpAccessTokens[idpAccessTokens.length - 1];
  assert.equal(seen, `Bearer ${idpToken}`, 'the MCP server received the IdP access token');
  assert.ok(!seen.includes(proxyToken), 'the proxy token never reaches the MCP server');
  log('tool call reached the MCP server with the IdP token');

  // A refresh through the SDK's own refresh path: drop the access token and keep the refresh token.
  provider.saveTokens({ ...provider.tokens(), access_token: 'expired-or-unknown' });
  const again = new Client({ name: 'e2e-client', version: '1.0.0' });
  await again.connect(new StreamableHTTPClientTransport(new URL(`${proxyUrl}/mcp`), { authProvider: provider }));
  const second = await again.callTool({ name: 'whoami', arguments: {} });
  assert.ok(second.content[0].text.startsWith('Bearer '), 'tool works after the SDK refreshed its token');
  assert.notEqual(provider.tokens().access_token, 'expired-or-unknown', 'the SDK refreshed');
  log('refresh through the SDK works');
  await connected.close();
  await again.close();
} catch (e) {
  failed = true;
  console.error('[e2e] FAILED:', e);
} finally {
  await cleanup();
}
console.log(failed ? '0 passed, 1 failed' : '1 passed, 0 failed');
process.exit(failed ? 1 : 0);
