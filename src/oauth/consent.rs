//! The consent step (MCP security best practices, "confused deputy"; SPEC §4).
//!
//! The proxy is one static client at the IdP for every dynamically registered client, so the user must approve each
//! client (its name, its redirect host, the scopes) before the proxy sends them to the IdP.
//!
//! Invariants:
//! - The consent form carries the sealed request ([`crate::oauth::flow::ConsentTicket`]) and a 256-bit CSRF token
//!   whose hash is sealed in that ticket: the token is bound to that one request, and nothing is stored.
//! - The browser that sees the consent page gets a binding cookie (`__Host-dcrp` with `Secure` under https,
//!   `dcrp` on plain-HTTP loopback; always `HttpOnly`, `SameSite=Lax`, `Path=/`), minted and signed by the proxy
//!   (a value the browser chose is never adopted). The form post and the IdP callback are accepted only with that
//!   cookie, so a login started in one browser cannot be finished in another (the flaw of CVE-2026-27124).
//! - The IdP `state` is created only after consent.
//! - Every client-supplied string on the page (its name, its publishing host, its redirect host) is escaped and
//!   isolated in `<bdi>`: registration refuses bidi and control characters, and the page does not rely on it
//!   (clients restored from an older snapshot, right-to-left names).

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::redirect_uri;
use crate::http::html::{escape, isolate, page};
use crate::http::Body;
use crate::store::AuthorizationRequest;
use crate::store::Client;

/// The binding cookie's name for the scheme of `public_url`.
pub fn cookie_name(https: bool) -> &'static str {
    if https {
        "__Host-dcrp"
    } else {
        "dcrp"
    }
}

/// The `Set-Cookie` value for a browser binding.
pub fn set_cookie(https: bool, value: &str, max_age_secs: u64) -> Option<HeaderValue> {
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::try_from(format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}",
        cookie_name(https)
    ))
    .ok()
}

/// Every value of the binding cookie in a request, in order (a browser may send several cookies of one name).
/// Whether a value is one the proxy minted is [`crate::oauth::flow::SignIns::browser_cookie`]'s question.
pub fn cookie_values(headers: &HeaderMap, https: bool) -> Vec<&str> {
    let name = cookie_name(https);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .collect()
}

/// Where the answer goes, as the user should read it: `host[:port]`, or `scheme://host` for an app's private-use
/// scheme (the scheme names the app).
fn redirect_host(uri: &str) -> String {
    url::Url::parse(uri)
        .ok()
        .and_then(|u| {
            let host = u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            })?;
            Some(if matches!(u.scheme(), "http" | "https") { host } else { format!("{}://{host}", u.scheme()) })
        })
        .unwrap_or_else(|| uri.to_owned())
}

/// Shown for a metadata-document client answered on loopback: any program on the user's computer can listen
/// there and present a well-known client's document URL (MCP security best practices on metadata documents).
const LOOPBACK_WARNING: &str = "<dd class=\"error\">The answer goes to a program on this computer. Any program on \
     this computer can claim this identity: continue only if you just started the connection from that program.</dd>";

/// The consent page for a validated authorization request; `request` is its sealed ticket. `notice`: what the
/// person's organisation requires of this sign-in, when Entra refused the last one for want of it (issue 16).
pub fn render(
    client: &Client,
    pending: &AuthorizationRequest,
    request: &str,
    csrf: &str,
    notice: Option<&str>,
) -> Response<Body> {
    let name = client.client_name.as_deref().unwrap_or("An unnamed application");
    let scopes: String = pending.scope.iter().map(|s| format!("<code>{}</code> ", escape(s))).collect();
    // A metadata-document client is identified by the host that publishes its document; its name is its own.
    let (how, published) = if crate::client_documents::is_document_id(&client.client_id) {
        (
            "This application identifies itself with a document published on the web and asks for access on your \
             behalf. Its name is chosen by the application; check the publishing site.",
            format!(
                "<dt>Published by</dt><dd><code>{}</code></dd>{}",
                isolate(&redirect_host(&client.client_id)),
                if redirect_uri::is_loopback_uri(&pending.redirect_uri) { LOOPBACK_WARNING } else { "" }
            ),
        )
    } else {
        ("This application registered itself with this server and asks for access on your behalf.", String::new())
    };
    let notice = notice.map(|n| format!("<p class=\"error\">{}</p>", escape(n))).unwrap_or_default();
    let body = format!(
        "<h1>Allow {name} to access your account?</h1>\
         {notice}<p>{how}</p>\
         <dl><dt>Application</dt><dd>{name}</dd>{published}\
         <dt>It will receive the answer at</dt><dd><code>{host}</code></dd>\
         <dt>Permissions</dt><dd>{scopes}</dd></dl>\
         <p>Only approve if you started this connection yourself.</p>\
         <form method=\"post\" action=\"/consent\">\
         <input type=\"hidden\" name=\"request\" value=\"{request}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\" name=\"action\" value=\"approve\">Approve</button>\
         <button type=\"submit\" name=\"action\" value=\"deny\">Deny</button></form>",
        name = isolate(name),
        host = isolate(&redirect_host(&pending.redirect_uri)),
        request = escape(request),
        csrf = escape(csrf),
    );
    page(StatusCode::OK, "Approve access", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_is_host_prefixed_and_secure_only_under_https() {
        let v = set_cookie(true, "abc", 600).map(|v| v.to_str().unwrap_or("").to_owned()).unwrap_or_default();
        assert!(v.starts_with("__Host-dcrp=abc; Path=/; HttpOnly; SameSite=Lax"));
        assert!(v.ends_with("; Secure"));
        let v = set_cookie(false, "abc", 600).map(|v| v.to_str().unwrap_or("").to_owned()).unwrap_or_default();
        assert!(v.starts_with("dcrp=abc") && !v.contains("Secure"));
    }

    #[test]
    fn cookie_is_read_among_others() {
        let mut h = HeaderMap::new();
        let token = "a".repeat(43);
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; dcrp={token}; y=2")).unwrap_or(HeaderValue::from_static("")),
        );
        assert_eq!(cookie_values(&h, false), vec![token.as_str()]);
        assert!(cookie_values(&h, true).is_empty());
    }
}
