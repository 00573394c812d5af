//! The proxy's HTML pages (consent, login, errors): every echoed value is escaped, and every page is sent with
//! `Content-Security-Policy` (no scripts, no framing, no plugins or base override; form-action is left open because the consent and login forms redirect to the IdP and to the client, and browsers apply form-action to those redirects), `X-Frame-Options: DENY`,
//! `Referrer-Policy: no-referrer` and `Cache-Control: no-store`.

use http::{header, HeaderValue, Response, StatusCode};

use super::{full, Body};

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#222}\
h1{font-size:1.4rem}code{background:#f3f3f3;padding:.1rem .3rem}dl dt{font-weight:600;margin-top:.6rem}\
button{font-size:1rem;padding:.5rem 1.2rem;margin-right:.6rem}input{font-size:1rem;padding:.3rem;width:100%}\
.error{color:#a00}";

/// A complete page; `body_html` must already be escaped.
pub fn page(status: StatusCode, title: &str, body_html: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width\"><title>{}</title><style>{STYLE}</style></head><body>{body_html}</body></html>",
        escape(title)
    );
    let mut resp = Response::new(full(html));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An error page that does not redirect anywhere.
pub fn error_page(status: StatusCode, title: &str, message: &str) -> Response<Body> {
    page(status, title, &format!("<h1>{}</h1><p class=\"error\">{}</p>", escape(title), escape(message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup_and_attribute_breaks() {
        assert_eq!(escape("<script>\"x\"&'y'"), "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;");
    }
}
