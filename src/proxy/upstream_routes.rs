//! `[[routes]]`: one sign-in, several APIs (issue 16 §3).
//!
//! - Each route is its own protected resource `<public_url><path_prefix>` (RFC 8707 §2), with its own RFC 9728
//!   metadata at `/.well-known/oauth-protected-resource<path_prefix>` (§3.1, path-inserted) and its own
//!   `WWW-Authenticate` `resource_metadata` (RFC 9728 §5.1).
//! - A proxy token is bound to the resource its grant asked for (RFC 8707 `resource` at `/authorize` and `/token`):
//!   a token for one route is refused on another route and on `[upstream]`, and a token for `[upstream]` (or no
//!   `resource`) is refused on every route — 401 `invalid_token` (RFC 6750 §3.1: the token is invalid for this
//!   resource; the challenge names the route's metadata, so the client signs in for it). Not 403: more scope would
//!   not help, only a token for the right audience.
//! - Paths under no route go to `[upstream]` exactly as without routes.

use bytes::Bytes;
use serde_json::json;

use crate::config::{Config, UpstreamRouteConfig};
use crate::endpoint::Endpoint;
use crate::oauth::metadata::challenge_scopes;

use super::Forwarder;

/// A route with everything its requests need, built once at start.
pub struct UpstreamRoute {
    pub config: UpstreamRouteConfig,
    /// `<public_url><path_prefix>`: the RFC 8707 resource a token must be bound to.
    pub resource: String,
    /// Path of the route's RFC 9728 document.
    pub metadata_path: String,
    pub metadata: Bytes,
    /// The RFC 9728 URL of the route's challenges.
    pub resource_metadata: String,
    /// `resource_metadata="…", scope="…"` of the route's challenges.
    pub challenge: String,
    /// The route's own upstream connection pool.
    pub forwarder: Forwarder,
}

impl UpstreamRoute {
    /// The state of every `[[routes]]` entry.
    pub fn build_all(config: &Config) -> Result<Vec<Self>, std::io::Error> {
        config
            .routes
            .iter()
            .map(|r| {
                let base = &config.server.public_url;
                let resource = config.route_resource_url(r);
                let metadata_path =
                    format!("{}{}", Endpoint::ProtectedResourceMetadata.path().unwrap_or_default(), r.path_prefix);
                let resource_metadata = format!("{base}{metadata_path}");
                let scopes = challenge_scopes(&config.idp.scopes);
                let doc = json!({
                    "resource": resource,
                    "authorization_servers": [base],
                    "scopes_supported": scopes,
                    "bearer_methods_supported": ["header"],
                    "resource_name": format!("dcr-proxy protected API {}", r.path_prefix),
                });
                let upstream = crate::config::UpstreamConfig {
                    url: r.url.clone(),
                    resource_path: r.path_prefix.clone(),
                    required_scopes: Vec::new(),
                    ..config.upstream.clone()
                };
                Ok(Self {
                    challenge: format!("resource_metadata=\"{resource_metadata}\", scope=\"{}\"", scopes.join(" ")),
                    resource_metadata,
                    metadata: Bytes::from(doc.to_string()),
                    metadata_path,
                    resource,
                    forwarder: Forwarder::new(&upstream, config.is_https())?,
                    config: r.clone(),
                })
            })
            .collect()
    }
}

/// The route serving a canonical request path; `None`: `[upstream]`.
pub fn route_for<'a>(routes: &'a [UpstreamRoute], path: &str) -> Option<&'a UpstreamRoute> {
    routes.iter().find(|r| r.config.serves(path))
}

/// Whether a grant bound to `bound` (its RFC 8707 `resource`, `None` when it named none) may be used on `target`
/// (`Some(route resource)`, or `None` for `[upstream]`). A trailing `/` is not a different resource.
pub fn bound_to(bound: Option<&str>, target: Option<&str>, routes: &[UpstreamRoute]) -> bool {
    let norm = |s: &str| s.trim_end_matches('/').to_owned();
    let bound_route = bound.map(norm).filter(|b| routes.iter().any(|r| norm(&r.resource) == *b));
    match target {
        Some(t) => bound_route.as_deref() == Some(norm(t).as_str()),
        None => bound_route.is_none(),
    }
}

/// The values RFC 8707 `resource` may take for the routes (with and without a trailing `/`).
pub fn accepted_resources(routes: &[UpstreamRoute]) -> impl Iterator<Item = String> + '_ {
    routes.iter().flat_map(|r| [r.resource.clone(), format!("{}/", r.resource)])
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn routes() -> Vec<UpstreamRoute> {
        with_config().1
    }

    fn with_config() -> (Config, Vec<UpstreamRoute>) {
        let text = format!(
            "{}\n[[routes]]\npath_prefix = \"/graph\"\nurl = \"http://127.0.0.1:9/\"\nscopes = [\"g\"]\n\
             [[routes]]\npath_prefix = \"/tickets\"\nurl = \"http://127.0.0.1:9/\"\nscopes = [\"t\"]\n",
            crate::config::DEFAULT_CONFIG
        );
        let config = Config::from_toml(&text, |_| None).expect("config");
        let routes = UpstreamRoute::build_all(&config).expect("routes");
        (config, routes)
    }

    #[test]
    fn a_token_is_bound_to_the_resource_it_asked_for() {
        let (config, routes) = with_config();
        let graph = routes[0].resource.clone();
        let tickets = routes[1].resource.clone();
        assert!(bound_to(Some(&graph), Some(&graph), &routes));
        assert!(bound_to(Some(&format!("{graph}/")), Some(&graph), &routes));
        assert!(!bound_to(Some(&graph), Some(&tickets), &routes), "another route");
        assert!(!bound_to(Some(&graph), None, &routes), "a route's token on [upstream]");
        assert!(!bound_to(None, Some(&graph), &routes), "no resource: [upstream] only");
        assert!(bound_to(None, None, &routes));
        assert!(bound_to(Some(&config.resource_url()), None, &routes));
    }

    #[test]
    fn each_route_has_its_own_metadata() {
        let routes = routes();
        assert_eq!(routes[0].metadata_path, "/.well-known/oauth-protected-resource/graph");
        assert!(routes[0].challenge.contains("/.well-known/oauth-protected-resource/graph\""));
        let doc: serde_json::Value = serde_json::from_slice(&routes[1].metadata).expect("json");
        assert_eq!(doc["resource"], routes[1].resource);
        assert!(route_for(&routes, "/graphx").is_none());
        assert_eq!(route_for(&routes, "/graph/me").map(|r| r.resource.as_str()), Some(routes[0].resource.as_str()));
    }
}
