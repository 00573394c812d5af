// Example MCP server for docker-compose: one tool, `whoami`, that reports who dcr-proxy says the caller is
// (the Authorization header from Entra ID, or X-Forwarded-User with the local login). Streamable HTTP, stateless.
import http from 'node:http';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';

const port = Number(process.env.PORT ?? 3000);

http
  .createServer(async (req, res) => {
    if (req.method !== 'POST' || !req.url.startsWith('/mcp')) {
      res.writeHead(req.method === 'POST' ? 404 : 405).end();
      return;
    }
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const caller = req.headers['x-forwarded-user'] ?? (req.headers['authorization'] ? 'bearer token from the IdP' : 'anonymous');
    const server = new McpServer({ name: 'example-mcp-server', version: '1.0.0' });
    server.registerTool('whoami', { description: 'Who the proxy says the caller is' }, async () => ({
      content: [{ type: 'text', text: String(caller) }],
    }));
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.on('close', () => {
      transport.close();
      server.close();
    });
    await server.connect(transport);
    await transport.handleRequest(req, res, JSON.parse(Buffer.concat(chunks).toString('utf8')));
  })
  .listen(port, '0.0.0.0', () => console.log(`example MCP server on :${port}`));

// PID 1 in a container gets no default signal handlers: stop at once on SIGTERM/SIGINT (docker compose down).
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
