//! The sign-in flow's cookies: the browser binding (`dcrp`, `__Host-dcrp` under https) that ties the consent post
//! and the IdP callback to the browser that saw the consent page, and the person cookie (`dcrp-who`,
//! `__Host-dcrp-who`) that says who last signed in there. Both `HttpOnly`, `SameSite=Lax`, `Path=/`, `Secure` under
//! https; their values are minted and checked by [`crate::oauth::flow::SignIns`], never adopted from a browser.

use http::{header, HeaderMap, HeaderValue};

/// The binding cookie's name for the scheme of `public_url`.
pub fn cookie_name(https: bool) -> &'static str {
    if https {
        "__Host-dcrp"
    } else {
        "dcrp"
    }
}

/// The name of the cookie that says who last signed in with this browser ([`crate::oauth::flow::SignIns::person_key`],
/// issue 23 item 11): what Entra requires of that person's next sign-in is found by it, not by the client.
pub fn person_cookie_name(https: bool) -> &'static str {
    if https {
        "__Host-dcrp-who"
    } else {
        "dcrp-who"
    }
}

/// The `Set-Cookie` value for a browser binding.
pub fn set_cookie(https: bool, value: &str, max_age_secs: u64) -> Option<HeaderValue> {
    set_named_cookie(cookie_name(https), https, value, max_age_secs)
}

/// The `Set-Cookie` value of the person cookie ([`person_cookie_name`]), same attributes as the binding cookie.
pub fn set_person_cookie(https: bool, value: &str, max_age_secs: u64) -> Option<HeaderValue> {
    set_named_cookie(person_cookie_name(https), https, value, max_age_secs)
}

fn set_named_cookie(name: &str, https: bool, value: &str, max_age_secs: u64) -> Option<HeaderValue> {
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::try_from(format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}"))
        .ok()
}

/// Every value of the binding cookie in a request, in order (a browser may send several cookies of one name).
/// Whether a value is one the proxy minted is [`crate::oauth::flow::SignIns::browser_cookie`]'s question.
pub fn cookie_values(headers: &HeaderMap, https: bool) -> Vec<&str> {
    named_cookie_values(headers, cookie_name(https))
}

/// Every value of the cookie `name` in a request, in order.
pub fn named_cookie_values<'h>(headers: &'h HeaderMap, name: &str) -> Vec<&'h str> {
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
