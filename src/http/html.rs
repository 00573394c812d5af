//! The proxy's HTML pages (consent, login, errors): every echoed value is escaped (control and format characters,
//! bidi overrides and isolates among them, are shown as U+FFFD, so that no text can reorder or hide what follows
//! it), a client-supplied name is isolated in `<bdi>` ([`isolate`]) so that right-to-left text in it cannot move
//! the words around it (Unicode Bidirectional Algorithm, UAX #9), and every page is sent with
//! `Content-Security-Policy` ([`CSP`]: no scripts, images only from the proxy (its logo), no framing, no plugins or base override; form-action is left open because the consent and login forms redirect to the IdP and to the client, and browsers apply form-action to those redirects), `X-Frame-Options: DENY`,
//! `Referrer-Policy: no-referrer` and `Cache-Control: no-store`.

use http::{header, HeaderValue, Response, StatusCode};

use super::{full, Body};

/// Where the pages' logo (`pages.logo_file`) is served; never forwarded, 404 when no logo is configured.
pub const LOGO_PATH: &str = "/dcr-proxy/logo";

/// Where browsers ask for a site's icon: the logo again ([`crate::endpoint::Endpoint::Logo`]).
pub const FAVICON_PATH: &str = "/favicon.ico";

/// Escapes text for HTML element content and double-quoted attribute values. Control and format characters
/// ([`is_control_or_format`]) become U+FFFD; tab, line feed and carriage return stay (HTML whitespace).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if is_control_or_format(c) => out.push(char::REPLACEMENT_CHARACTER),
            c => out.push(c),
        }
    }
    out
}

/// A client-supplied string as element content: escaped and isolated in `<bdi>` (HTML §4.5.23), so that its
/// direction does not leak into the sentence around it.
pub fn isolate(s: &str) -> String {
    format!("<bdi>{}</bdi>", escape(s))
}

/// Whether `c` is a control character (Unicode general category Cc), a format character (Cf: the bidi embeddings,
/// overrides, isolates and marks U+202A–U+202E, U+2066–U+2069, U+200E/F, U+061C; zero-width characters; the BOM;
/// tags …) or a line or paragraph separator (U+2028/9). None of them has a place in a name or a URL shown to a
/// user, and each can make displayed text read differently from what it is.
pub fn is_control_or_format(c: char) -> bool {
    // Unicode 15.1 general category Cf.
    const FORMAT: [(u32, u32); 20] = [
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x202A, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE007F),
    ];
    let u = u32::from(c);
    c.is_control() || u == 0x2028 || u == 0x2029 || FORMAT.iter().any(|(lo, hi)| (*lo..=*hi).contains(&u))
}

/// The pages' one stylesheet: light and dark (`prefers-color-scheme`), a visible focus ring on every control,
/// a primary and a secondary button, readable from a 320px phone to a desktop. Inline, as the CSP allows.
const STYLE: &str = ":root{color-scheme:light dark;--bg:#f4f5f7;--card:#fff;--fg:#1b1d21;--muted:#50555e;\
--line:#d5d8de;--accent:#0b57d0;--accent-fg:#fff;--code:#eef0f3;--error:#a3141c;--warn-bg:#fff4e5;--focus:#0b57d0}\
@media (prefers-color-scheme:dark){:root{--bg:#111317;--card:#1c1f25;--fg:#e8eaed;--muted:#b4b9c2;--line:#3a3f48;\
--accent:#8ab4f8;--accent-fg:#0b1b33;--code:#2a2e36;--error:#ff8a80;--warn-bg:#3a2a12;--focus:#8ab4f8}}\
*{box-sizing:border-box}\
body{margin:0;background:var(--bg);color:var(--fg);font:1rem/1.5 system-ui,-apple-system,'Segoe UI',sans-serif}\
.brand{display:flex;align-items:center;gap:.6rem;max-width:34rem;margin:0 auto;padding:1.2rem 1rem .4rem;\
font-weight:600;color:var(--muted)}.brand img{width:2rem;height:2rem;object-fit:contain}\
main{max-width:34rem;margin:0 auto 2rem;padding:1.5rem;background:var(--card);border:1px solid var(--line);\
border-radius:.75rem}@media (max-width:36rem){main{border-radius:0;border-left:0;border-right:0}}\
h1{font-size:1.35rem;line-height:1.3;margin:0 0 .8rem}h2{font-size:1rem;margin:1.2rem 0 .4rem}\
p{margin:.5rem 0}.muted{color:var(--muted)}\
code{background:var(--code);padding:.1rem .3rem;border-radius:.25rem;font-size:.9em;overflow-wrap:anywhere}\
dl{margin:1rem 0;display:grid;grid-template-columns:minmax(7rem,max-content) 1fr;gap:.4rem 1rem}\
dt{font-weight:600}dd{margin:0;overflow-wrap:anywhere}@media (max-width:30rem){dl{grid-template-columns:1fr}dd{margin-bottom:.4rem}}\
ul{padding-left:1.2rem;margin:.3rem 0}li{margin:.3rem 0}\
.actions{display:flex;flex-wrap:wrap;gap:.75rem;margin-top:1.4rem}\
button{font:inherit;font-weight:600;padding:.6rem 1.4rem;border-radius:.5rem;cursor:pointer;min-height:2.75rem}\
.primary{background:var(--accent);color:var(--accent-fg);border:2px solid var(--accent)}\
.secondary{background:transparent;color:var(--fg);border:2px solid var(--line)}\
label{display:block;font-weight:600;margin-top:.8rem}\
input{font:inherit;width:100%;padding:.5rem .6rem;margin-top:.25rem;border:1px solid var(--muted);border-radius:.4rem;\
background:var(--card);color:var(--fg)}\
:focus-visible{outline:3px solid var(--focus);outline-offset:2px}\
body>main:first-child{margin-top:2rem}.detail{display:block;padding:.5rem .6rem;word-break:break-all}\
.error{color:var(--error)}.notice{background:var(--warn-bg);border-radius:.4rem;padding:.6rem .8rem}";

/// The service's header of a page: its product name and, when one is configured, its logo.
#[derive(Debug, Clone, Copy)]
pub struct Brand<'a> {
    pub product_name: &'a str,
    pub logo: bool,
}

/// The page's `Content-Security-Policy`: no scripts, inline styles only, images only from the proxy itself (the
/// logo), no framing, no plugins, no base override.
pub const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'";

/// A complete page without the service's header (error pages, which are rendered without the config);
/// `body_html` must already be escaped.
pub fn page(status: StatusCode, title: &str, body_html: &str) -> Response<Body> {
    page_with(status, title, None, body_html)
}

/// A complete page under the service's header; `body_html` must already be escaped.
pub fn branded_page(status: StatusCode, title: &str, brand: Brand<'_>, body_html: &str) -> Response<Body> {
    page_with(status, title, Some(brand), body_html)
}

fn page_with(status: StatusCode, title: &str, brand: Option<Brand<'_>>, body_html: &str) -> Response<Body> {
    let (header, title) = match brand {
        Some(b) => {
            let logo = if b.logo {
                format!("<img src=\"{}\" alt=\"\" width=\"32\" height=\"32\">", LOGO_PATH)
            } else {
                String::new()
            };
            (
                format!("<header class=\"brand\">{logo}<span>{}</span></header>", escape(b.product_name)),
                format!("{} – {}", escape(title), escape(b.product_name)),
            )
        }
        None => (String::new(), escape(title)),
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" \
         content=\"width=device-width, initial-scale=1\"><meta name=\"color-scheme\" content=\"light dark\">\
         <meta name=\"referrer\" content=\"no-referrer\"><title>{title}</title><style>{STYLE}</style></head>\
         <body>{header}<main>{body_html}</main></body></html>"
    );
    let mut resp = Response::new(full(html));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The configured logo at [`LOGO_PATH`]: its type from its extension, cached a day by browsers,
/// and sandboxed by its own CSP (an SVG opened directly runs no script and loads nothing).
pub fn logo_response(bytes: bytes::Bytes, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(bytes));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; sandbox"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("same-origin"));
    resp
}

/// An error page that does not redirect anywhere: what went wrong (`title`, `message`, and the value at fault as
/// code, `detail`) and what to do (`advice`).
pub fn error_page(
    status: StatusCode,
    title: &str,
    message: &str,
    detail: Option<&str>,
    advice: &str,
) -> Response<Body> {
    let detail = detail.map(|d| format!("<p><code class=\"detail\">{}</code></p>", escape(d))).unwrap_or_default();
    let advice =
        if advice.is_empty() { String::new() } else { format!("<h2>What you can do</h2><p>{}</p>", escape(advice)) };
    page(
        status,
        title,
        &format!(
            "<h1>{}</h1><div role=\"alert\"><p class=\"error\">{}</p>{detail}</div>{advice}",
            escape(title),
            escape(message)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup_and_attribute_breaks() {
        assert_eq!(escape("<script>\"x\"&'y'"), "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;");
    }

    #[test]
    fn bidi_controls_and_invisible_characters_are_detected_and_shown_as_replacement_characters() {
        for c in [
            '\u{202A}',
            '\u{202B}',
            '\u{202C}',
            '\u{202D}',
            '\u{202E}',
            '\u{2066}',
            '\u{2067}',
            '\u{2068}',
            '\u{2069}',
            '\u{200E}',
            '\u{200F}',
            '\u{061C}',
            '\u{200B}',
            '\u{200D}',
            '\u{FEFF}',
            '\u{00AD}',
            '\u{2028}',
            '\u{2029}',
            '\u{0000}',
            '\u{0007}',
            '\u{001B}',
            '\u{007F}',
            '\u{0085}',
            '\u{009F}',
            '\u{E0041}',
            '\n',
        ] {
            assert!(is_control_or_format(c), "U+{:04X}", u32::from(c));
        }
        for c in ['a', 'é', 'א', 'ع', '中', ' ', '\u{00A0}', '😀', '\u{FE0F}', '-'] {
            assert!(!is_control_or_format(c), "U+{:04X}", u32::from(c));
        }
        assert_eq!(escape("evil\u{202E}gnp.exe\u{200B}"), "evil\u{FFFD}gnp.exe\u{FFFD}");
        assert_eq!(escape("a\tb\nc"), "a\tb\nc");
        assert_eq!(isolate("<x>\u{202E}"), "<bdi>&lt;x&gt;\u{FFFD}</bdi>");
    }
}
