#!/usr/bin/env python3
"""One MCP client's life against the proxy started by .ci/compose-smoke, with the standard library only.

    compose_flow.py BASE USER PASSWORD STATE_FILE sign-in   # discovery, challenge, DCR, consent, login, token, tool call
    compose_flow.py BASE USER PASSWORD STATE_FILE reuse     # after a restart: the saved token still calls the tool

Every step checks what an MCP client relies on and exits non-zero naming the step that failed.
"""
import base64
import hashlib
import html.parser
import http.cookiejar
import json
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request

BASE, USER, PASSWORD, STATE, MODE = sys.argv[1:6]
REDIRECT = "http://127.0.0.1:9/callback"


def fail(step, detail):
    sys.exit(f"compose-smoke: step '{step}' failed: {detail}")


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


JAR = http.cookiejar.CookieJar()
OPENER = urllib.request.build_opener(NoRedirect, urllib.request.HTTPCookieProcessor(JAR))


def call(method, path, body=None, headers=None):
    url = path if path.startswith("http") else BASE + path
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with OPENER.open(req, timeout=20) as resp:
            return resp.status, dict(resp.headers), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8", "replace")


class Form(html.parser.HTMLParser):
    """The fields of the first form on a page: hidden inputs, plus the submit button named `action`."""

    def __init__(self):
        super().__init__()
        self.action, self.fields = None, {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and self.action is None:
            self.action = a.get("action")
        if tag == "input" and a.get("type") == "hidden" and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")


def form_of(step, page):
    f = Form()
    f.feed(page)
    if not f.action:
        fail(step, f"no form on the page: {page[:300]}")
    return f


def post_form(path, fields):
    return call("POST", path, urllib.parse.urlencode(fields).encode(), {"Content-Type": "application/x-www-form-urlencoded"})


def mcp(token, message):
    status, headers, body = call(
        "POST",
        "/mcp",
        json.dumps(message).encode(),
        {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        },
    )
    if status != 200:
        fail(f"mcp {message['method']}", f"status {status}: {body[:300]}")
    # Streamable HTTP answers with JSON or with one SSE event.
    data = [line[5:].strip() for line in body.splitlines() if line.startswith("data:")]
    return json.loads(data[0] if data else body)


def whoami(token):
    mcp(token, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "compose-smoke", "version": "1"}}})
    result = mcp(token, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}})
    text = result.get("result", {}).get("content", [{}])[0].get("text")
    if text != USER:
        fail("tool call", f"whoami answered {result}")


if MODE == "reuse":
    with open(STATE) as f:
        saved = json.load(f)
    whoami(saved["access_token"])
    status, _, body = post_form("/token", {"grant_type": "refresh_token", "refresh_token": saved["refresh_token"], "client_id": saved["client_id"]})
    if status != 200:
        fail("refresh after restart", f"status {status}: {body}")
    whoami(json.loads(body)["access_token"])
    print("compose-smoke: the grant survived the restart; refresh and tool call work")
    sys.exit(0)

status, _, body = call("GET", "/.well-known/oauth-authorization-server")
if status != 200 or json.loads(body).get("issuer") != BASE:
    fail("metadata", f"status {status}: {body[:300]}")
status, headers, body = call("POST", "/mcp", b"{}", {"Content-Type": "application/json"})
challenge = {k.lower(): v for k, v in headers.items()}.get("www-authenticate", "")
if status != 401 or "resource_metadata=" not in challenge:
    fail("challenge", f"status {status}, WWW-Authenticate {challenge!r}")
status, _, body = call(
    "POST",
    "/register",
    json.dumps({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none", "client_name": "compose smoke"}).encode(),
    {"Content-Type": "application/json"},
)
if status != 201:
    fail("register", f"status {status}: {body[:300]}")
client_id = json.loads(body)["client_id"]

verifier = secrets.token_urlsafe(48)
challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
query = urllib.parse.urlencode({
    "response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "state": "s1",
    "code_challenge": challenge, "code_challenge_method": "S256", "resource": BASE + "/mcp",
})
status, _, page = call("GET", "/authorize?" + query)
if status != 200:
    fail("authorize", f"status {status}: {page[:300]}")
consent = form_of("consent page", page)
status, headers, page = post_form(consent.action, {**consent.fields, "action": "approve"})
location = {k.lower(): v for k, v in headers.items()}.get("location", "")
if status != 302:
    fail("consent", f"status {status}: {page[:300]}")
status, _, page = call("GET", location)
if status != 200:
    fail("login page", f"status {status}: {page[:300]}")
login = form_of("login page", page)
status, headers, page = post_form(login.action, {**login.fields, "username": USER, "password": PASSWORD})
location = {k.lower(): v for k, v in headers.items()}.get("location", "")
if status != 302 or not location.startswith(REDIRECT):
    fail("login", f"status {status}, location {location!r}: {page[:300]}")
params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
if params.get("state") != "s1" or "code" not in params:
    fail("callback", f"redirect {location}")
status, _, body = post_form("/token", {
    "grant_type": "authorization_code", "code": params["code"], "redirect_uri": REDIRECT,
    "client_id": client_id, "code_verifier": verifier,
})
if status != 200:
    fail("token", f"status {status}: {body}")
tokens = json.loads(body)
whoami(tokens["access_token"])
with open(STATE, "w") as f:
    json.dump({"client_id": client_id, "access_token": tokens["access_token"], "refresh_token": tokens["refresh_token"]}, f)
print("compose-smoke: metadata, challenge, registration, consent, login, token and tool call work")
