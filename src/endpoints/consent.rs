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
//! - The page names the protected resource (`pages.resource_name`), the application and who publishes it, what
//!   each scope lets it do in words ([`describe_scope`]) and where the answer goes (the redirect host); Approve is
//!   the primary button, Deny the secondary.
//! - Every client-supplied string on the page (its name, its publishing host, its redirect host) is escaped and
//!   isolated in `<bdi>`: registration refuses bidi and control characters, and the page does not rely on it
//!   (clients restored from an older snapshot, right-to-left names).

use http::{Response, StatusCode};

use crate::redirect_uri;
use std::collections::BTreeMap;

use crate::config::pages::PagesConfig;
use crate::http::html::{branded_page, escape, isolate};
use crate::http::Body;
use crate::store::AuthorizationRequest;
use crate::store::Client;

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
const LOOPBACK_WARNING: &str = "<p class=\"notice\" role=\"note\">The answer goes to a program on this computer. \
     Any program on this computer can claim this identity: continue only if you just started the connection from \
     that program.</p>";

/// Built-in descriptions, in words, of the OpenID Connect scopes (OIDC Core §5.4, §11) and common Microsoft Graph
/// permissions; `[pages.scopes]` comes first.
const BUILT_IN_SCOPES: [(&str, &str); 22] = [
    ("openid", "Sign you in with your account"),
    ("profile", "See your name and basic profile"),
    ("email", "See your email address"),
    ("offline_access", "Keep access while you are not using it, until you sign out or revoke it"),
    ("User.Read", "Sign you in and read your profile"),
    ("User.ReadBasic.All", "Read the basic profiles of all users in your organisation"),
    ("User.Read.All", "Read the full profiles of all users in your organisation"),
    ("Mail.Read", "Read your email"),
    ("Mail.ReadWrite", "Read, change and delete your email"),
    ("Mail.Send", "Send email as you"),
    ("Calendars.Read", "Read your calendars"),
    ("Calendars.ReadWrite", "Read and change your calendars"),
    ("Contacts.Read", "Read your contacts"),
    ("Files.Read", "Read your files"),
    ("Files.ReadWrite", "Read, change and delete your files"),
    ("Files.Read.All", "Read all files you can open"),
    ("Files.ReadWrite.All", "Read, change and delete all files you can open"),
    ("Sites.Read.All", "Read items in all SharePoint sites you can open"),
    ("Chat.Read", "Read your Teams chat messages"),
    ("Team.ReadBasic.All", "See the Teams you belong to"),
    ("Tasks.ReadWrite", "Read and change your tasks"),
    (".default", "Everything an administrator allowed this service to do for you"),
];

/// What a scope lets the application do, in words: the operator's description, else a built-in one (matched by
/// the exact name, then by its last path segment, so `https://graph.microsoft.com/User.Read` reads as `User.Read`),
/// else `None` (the page shows the raw name).
pub fn describe_scope<'a>(scope: &str, operator: &'a BTreeMap<String, String>) -> Option<&'a str> {
    if let Some(d) = operator.get(scope) {
        return Some(d);
    }
    let short = scope.rsplit_once('/').map_or(scope, |(_, last)| last);
    BUILT_IN_SCOPES.iter().find(|(name, _)| *name == scope || *name == short).map(|(_, d)| *d)
}

/// The consent page for a validated authorization request; `request` is its sealed ticket. `notice`: what the
/// person's organisation requires of this sign-in, when Entra refused the last one for want of it (issue 16).
pub fn render(
    client: &Client,
    pending: &AuthorizationRequest,
    request: &str,
    csrf: &str,
    pages: &PagesConfig,
    notice: Option<&str>,
) -> Response<Body> {
    let name = client.client_name.as_deref().unwrap_or("An unnamed application");
    let resource = escape(&pages.resource_name);
    let scopes: String = pending
        .scope
        .iter()
        .map(|s| match describe_scope(s, &pages.scope_descriptions) {
            Some(words) => format!("<li>{} <code>{}</code></li>", escape(words), escape(s)),
            None => format!("<li>Use the permission <code>{}</code></li>", escape(s)),
        })
        .collect();
    let scopes =
        if scopes.is_empty() { format!("<li>Use {resource} as you, with no further permission</li>") } else { scopes };
    // A metadata-document client is identified by the host that publishes its document; its name is its own.
    let (published, warning) = if crate::client_documents::is_document_id(&client.client_id) {
        (
            format!(
                "<code>{}</code> <span class=\"muted\">(the site that publishes the application's identity; its \
                 name is chosen by the application{})</span>",
                isolate(&redirect_host(&client.client_id)),
                if client.auth_method == crate::store::ClientAuthMethod::PrivateKeyJwt {
                    ". The application proves who it is with a key this site publishes"
                } else {
                    ""
                }
            ),
            if redirect_uri::is_loopback_uri(&pending.redirect_uri) { LOOPBACK_WARNING } else { "" },
        )
    } else {
        ("Nobody checked: the application registered itself with this service, and chose its own name".to_owned(), "")
    };
    let notice = notice.map(|n| format!("<p class=\"notice\" role=\"note\">{}</p>", escape(n))).unwrap_or_default();
    let body = format!(
        "<h1>Allow {name} to access {resource}?</h1>{notice}\
         <p>{name} asks to use <strong>{resource}</strong> in your name.</p>\
         <dl><dt>Application</dt><dd>{name}</dd>\
         <dt>Published by</dt><dd>{published}</dd>\
         <dt>Your answer goes to</dt><dd><code>{host}</code></dd></dl>{warning}\
         <h2 id=\"permissions\">If you approve, it will be able to</h2>\
         <ul aria-labelledby=\"permissions\">{scopes}</ul>\
         <p class=\"muted\">Only approve if you started this connection yourself. You can sign out of the \
         application at any time to end its access.</p>\
         <form method=\"post\" action=\"/consent\" aria-label=\"Your answer\">\
         <input type=\"hidden\" name=\"request\" value=\"{request}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <div class=\"actions\">\
         <button class=\"primary\" type=\"submit\" name=\"action\" value=\"approve\">Approve</button>\
         <button class=\"secondary\" type=\"submit\" name=\"action\" value=\"deny\">Deny</button></div></form>",
        name = isolate(name),
        host = isolate(&redirect_host(&pending.redirect_uri)),
        request = escape(request),
        csrf = escape(csrf),
    );
    branded_page(StatusCode::OK, "Approve access", pages.brand(), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_read_as_words_operator_first_then_built_in_then_none() {
        let mut operator = BTreeMap::new();
        operator.insert("tools:write".to_owned(), "Run tools that change things".to_owned());
        operator.insert("email".to_owned(), "See your work email".to_owned());
        assert_eq!(describe_scope("tools:write", &operator), Some("Run tools that change things"));
        assert_eq!(describe_scope("email", &operator), Some("See your work email"));
        assert_eq!(describe_scope("openid", &operator), Some("Sign you in with your account"));
        assert_eq!(
            describe_scope("https://graph.microsoft.com/User.Read", &operator),
            describe_scope("User.Read", &operator)
        );
        assert_eq!(describe_scope("api://abc/.default", &operator), describe_scope(".default", &operator));
        assert_eq!(describe_scope("mystery", &operator), None);
    }
}
