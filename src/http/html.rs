//! The proxy's HTML pages (consent, login, errors): every echoed value is escaped (control and format characters,
//! bidi overrides and isolates among them, are shown as U+FFFD, so that no text can reorder or hide what follows
//! it), a client-supplied name is isolated in `<bdi>` ([`isolate`]) so that right-to-left text in it cannot move
//! the words around it (Unicode Bidirectional Algorithm, UAX #9), and every page is sent with
//! `Content-Security-Policy` (no scripts, no framing, no plugins or base override; form-action is left open because the consent and login forms redirect to the IdP and to the client, and browsers apply form-action to those redirects), `X-Frame-Options: DENY`,
//! `Referrer-Policy: no-referrer` and `Cache-Control: no-store`.

use http::{header, HeaderValue, Response, StatusCode};

use super::{full, Body};

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
