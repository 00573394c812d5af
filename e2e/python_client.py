"""The official MCP Python SDK client (PyPI `mcp`, pinned in requirements.txt) through dcr-proxy with Dynamic
Client Registration: discovery, /register, authorization code + PKCE (consent approved by a scripted browser,
login at oauth2-mock-server), token, then a tool call through the proxy.

Usage: python python_client.py <MCP endpoint URL behind the proxy>
Prints one line `RESULT {json}` with what the tool saw; sdk_flow.mjs checks it against the IdP's tokens.
Only 127.0.0.1 is ever contacted.
"""

import asyncio
import json
import re
import sys
from urllib.parse import parse_qs, urljoin, urlparse

import httpx2
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider, TokenStorage
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

REDIRECT = "http://127.0.0.1:33419/callback"


class MemoryStorage(TokenStorage):
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class Browser:
    """Follows redirects by hand, keeps cookies, approves the proxy's consent page."""

    def __init__(self) -> None:
        self.cookies: dict[str, str] = {}
        self.landed: dict[str, str] | None = None
        self.consent_seen = False

    def _keep(self, resp: httpx2.Response) -> None:
        for header in resp.headers.get_list("set-cookie"):
            pair = header.split(";", 1)[0]
            name, _, value = pair.partition("=")
            self.cookies[name.strip()] = value.strip()

    def _cookie_header(self) -> dict[str, str]:
        return {"cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}

    async def visit(self, url: str) -> None:
        async with httpx2.AsyncClient(follow_redirects=False, timeout=10) as http:
            resp = await http.get(url, headers=self._cookie_header())
            for _ in range(10):
                self._keep(resp)
                if resp.is_redirect:
                    location = urljoin(str(resp.url), resp.headers["location"])
                    if location.startswith(REDIRECT):
                        query = parse_qs(urlparse(location).query)
                        self.landed = {k: v[0] for k, v in query.items()}
                        return
                    assert location.startswith("http://127.0.0.1:"), f"browser would leave loopback: {location}"
                    resp = await http.get(location, headers=self._cookie_header())
                    continue
                html = resp.text
                assert resp.status_code == 200, f"unexpected page {resp.status_code}: {html}"
                assert "e2e Python client" in html, "the consent page names the client"
                self.consent_seen = True

                def field(name: str) -> str:
                    m = re.search(f'name="{name}" value="([^"]*)"', html)
                    assert m, f"no {name} in consent page"
                    return m.group(1)

                origin = f"{urlparse(url).scheme}://{urlparse(url).netloc}"
                resp = await http.post(
                    f"{origin}/consent",
                    data={"request": field("request"), "csrf": field("csrf"), "action": "approve"},
                    headers=self._cookie_header(),
                )
            raise AssertionError("too many redirects")


async def main(endpoint: str) -> None:
    browser = Browser()
    storage = MemoryStorage()

    async def redirect_handler(url: str) -> None:
        await browser.visit(url)

    async def callback_handler() -> AuthorizationCodeResult:
        assert browser.landed and "code" in browser.landed, f"no code: {browser.landed}"
        return AuthorizationCodeResult(
            code=browser.landed["code"], state=browser.landed.get("state"), iss=browser.landed.get("iss")
        )

    provider = OAuthClientProvider(
        server_url=endpoint,
        client_metadata=OAuthClientMetadata(
            client_name="e2e Python client",
            redirect_uris=[REDIRECT],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=redirect_handler,
        callback_handler=callback_handler,
    )
    async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
        async with streamable_http_client(endpoint, http_client=http) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = await session.list_tools()
                result = await session.call_tool("whoami", {})
    seen = result.content[0].text
    print(
        "RESULT "
        + json.dumps(
            {
                "client_id": storage.client.client_id if storage.client else None,
                "consent_seen": browser.consent_seen,
                "iss": (browser.landed or {}).get("iss"),
                "tools": [t.name for t in tools.tools],
                "access_token": storage.tokens.access_token if storage.tokens else None,
                "authorization_seen_by_server": seen,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
