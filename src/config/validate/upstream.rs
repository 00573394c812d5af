//! `[upstream]`, `[[routes]]` and `[policy]`: where requests go and what they may call.

use super::*;

/// `[[routes]]` (issue 16 §3): each `path_prefix` a plain path as the canonical forwarded path holds it, not `/`,
/// without a trailing `/`, neither the prefix of another route's nor below it, and not covering one of the proxy's
/// own endpoints or `upstream.resource_path`; `url` as `upstream.url`; `scopes` at least one, without spaces.
/// `[upstream]` stays required: it serves every path under no route.
pub(super) fn validate_routes(
    raw: Vec<RawRoute>,
    resource_path: &str,
) -> Result<Vec<UpstreamRouteConfig>, ConfigError> {
    let mut routes: Vec<UpstreamRouteConfig> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("routes[{i}].{field}");
        let prefix = r.path_prefix;
        if let Some(why) = route_prefix_problem(&prefix) {
            return Err(invalid_entry(key("path_prefix"), format!("`{prefix}` {why}")));
        }
        let own =
            OWN_PATHS.iter().chain([&resource_path]).find(|own| path_under(&prefix, own) || path_under(own, &prefix));
        if let Some(own) = own {
            return Err(invalid_entry(key("path_prefix"), format!("`{prefix}` overlaps the proxy's own path `{own}`")));
        }
        if let Some((j, other)) =
            routes.iter().enumerate().find(|(_, o)| o.serves(&prefix) || path_under(&prefix, &o.path_prefix))
        {
            return Err(invalid_entry(
                key("path_prefix"),
                format!("`{prefix}` overlaps routes[{j}].path_prefix `{}`", other.path_prefix),
            ));
        }
        let url =
            Url::parse(&r.url).map_err(|e| invalid_entry(key("url"), format!("`{}` is not a URL: {e}", r.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(invalid_entry(key("url"), "must be an http:// or https:// URL with a host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid_entry(key("url"), "must not have a query or fragment"));
        }
        if r.scopes.is_empty() || r.scopes.iter().any(|s| s.is_empty() || s.contains(char::is_whitespace)) {
            return Err(invalid_entry(key("scopes"), "must name at least one scope, each without spaces"));
        }
        routes.push(UpstreamRouteConfig { path_prefix: prefix, url, scopes: r.scopes });
    }
    Ok(routes)
}

/// The proxy's own fixed paths, which no route may cover.
pub(super) const OWN_PATHS: [&str; 14] = [
    "/.well-known",
    "/register",
    "/authorize",
    "/consent",
    "/callback",
    "/login",
    "/token",
    "/revoke",
    "/introspect",
    "/userinfo",
    "/healthz",
    "/readyz",
    crate::http::html::LOGO_PATH,
    crate::http::html::FAVICON_PATH,
];

/// Why a route's `path_prefix` is not a plain path the forwarded path can start with; `None` when it is.
pub(super) fn route_prefix_problem(prefix: &str) -> Option<&'static str> {
    let literal = |c: char| c.is_ascii_alphanumeric() || "/-._~!$&'()*+,=:@".contains(c);
    let bad_segment = prefix.split('/').skip(1).any(|s| s.is_empty() || s == "." || s == ".." || s.ends_with('.'));
    if !prefix.starts_with('/') || prefix == "/" || prefix.ends_with('/') {
        Some("must be a path starting with / such as \"/graph\", not / and without a trailing /")
    } else if !prefix.chars().all(literal) || bad_segment {
        Some(
            "must be a plain path of letters, digits and -._~!$&'()*+,=:@ (no %-escapes, spaces, non-ASCII, `;`, \
             `\\`, `//` or dot segments)",
        )
    } else {
        None
    }
}

pub(super) fn validate_upstream(raw: RawUpstream) -> Result<UpstreamConfig, ConfigError> {
    let url = Url::parse(&raw.url).map_err(|e| invalid("upstream.url", format!("`{}` is not a URL: {e}", raw.url)))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid("upstream.url", "must be an http:// or https:// URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("upstream.url", "must not have a query or fragment"));
    }
    if !raw.resource_path.starts_with('/') || raw.resource_path.contains(['?', '#']) {
        return Err(invalid("upstream.resource_path", "must be a path starting with / such as \"/mcp\""));
    }
    Ok(UpstreamConfig {
        url,
        resource_path: raw.resource_path,
        connect_timeout: duration("upstream.connect_timeout", raw.connect_timeout, Duration::from_secs(5))?,
        response_timeout: duration("upstream.response_timeout", raw.response_timeout, Duration::from_secs(60))?,
        required_scopes: raw
            .required_scopes
            .into_iter()
            .map(|r| PathScopes { path_prefix: r.path_prefix, scopes: r.scopes })
            .collect(),
        pool_idle_timeout: positive("upstream.pool_idle_timeout", raw.pool_idle_timeout, Duration::from_secs(90))?,
        pool_max_idle: match raw.pool_max_idle {
            Some(n) if n > 65_536 => return Err(invalid("upstream.pool_max_idle", "must be at most 65536")),
            n => n.unwrap_or(256),
        },
        drive_in_request_task: raw.drive_in_request_task.unwrap_or(true),
    })
}

/// `upstream.required_scopes`: each prefix is a path, each scope one the proxy offers (`idp.scopes`), or no token
/// could ever satisfy the rule.
pub(super) fn validate_required_scopes(
    upstream: UpstreamConfig,
    offered: &[String],
) -> Result<UpstreamConfig, ConfigError> {
    const KEY: &str = "upstream.required_scopes";
    for (i, rule) in upstream.required_scopes.iter().enumerate() {
        if !rule.path_prefix.starts_with('/') || rule.path_prefix.contains(['?', '#']) {
            return Err(invalid(
                KEY,
                format!("entry {i}: path_prefix `{}` must be a path starting with /", rule.path_prefix),
            ));
        }
        // Rules are compared with the canonical forwarded path (`http::target`): a prefix must be written as that
        // path holds it, or it would never match — no escapes, no character the canonical form encodes (a space,
        // non-ASCII), no `;`, `\\`, `//`, dot segment or segment ending in a dot.
        let literal = |c: char| c.is_ascii_alphanumeric() || "/-._~!$&'()*+,=:@".contains(c);
        let bad_segment = rule.path_prefix.split('/').skip(1).any(|s| s == "." || s == ".." || s.ends_with('.'));
        if !rule.path_prefix.chars().all(literal) || bad_segment || rule.path_prefix.contains("//") {
            return Err(invalid(
                KEY,
                format!(
                    "entry {i}: path_prefix `{}` must be a plain path of letters, digits and -._~!$&'()*+,=:@ \
                     (no %-escapes, spaces, non-ASCII, `;`, `\\`, `//` or dot segments), as the forwarded path holds it",
                    rule.path_prefix
                ),
            ));
        }
        if rule.scopes.is_empty() {
            return Err(invalid(KEY, format!("entry {i} ({}): scopes must name at least one scope", rule.path_prefix)));
        }
        if let Some(unknown) = rule.scopes.iter().find(|s| !offered.contains(s)) {
            return Err(invalid(
                KEY,
                format!(
                    "entry {i} ({}): scope `{unknown}` is not in idp.scopes, so no token could carry it",
                    rule.path_prefix
                ),
            ));
        }
    }
    Ok(upstream)
}

/// `[policy]`: each rule has a valid glob, at least one scope or group, and only scopes the IdP is asked for (a
/// step-up to a scope the proxy never grants would loop).
pub(super) fn validate_policy(raw: RawPolicy, offered: &[String]) -> Result<PolicyConfig, ConfigError> {
    const KEY: &str = "policy.tools";
    let max_body_bytes = raw.max_body_bytes.unwrap_or(1024 * 1024);
    if !(1024..=64 * 1024 * 1024).contains(&max_body_bytes) {
        return Err(invalid("policy.max_body_bytes", "must be between 1024 and 67108864 bytes"));
    }
    let mut rules = Vec::with_capacity(raw.tools.len());
    for rule in raw.tools {
        let pattern = crate::tool_policy::Pattern::parse(&rule.pattern).map_err(|e| invalid(KEY, e))?;
        if rule.scopes.is_empty() && rule.groups.is_empty() {
            return Err(invalid(KEY, format!("the rule for `{}` needs `scopes` or `groups`", rule.pattern)));
        }
        if let Some(s) = rule.scopes.iter().find(|s| !offered.contains(s)) {
            return Err(invalid(KEY, format!("scope `{s}` (rule `{}`) is not one of idp.scopes", rule.pattern)));
        }
        if rule.groups.iter().any(|g| g.trim().is_empty()) {
            return Err(invalid(KEY, format!("the rule for `{}` has an empty group", rule.pattern)));
        }
        rules.push(crate::tool_policy::ToolRule { pattern, scopes: rule.scopes, groups: rule.groups });
    }
    Ok(PolicyConfig { max_body_bytes, rules })
}
