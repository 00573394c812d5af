//! The proxy's own endpoints, parsed once from the request path into a [`Endpoint`].
//!
//! The paths are those the authorization-server metadata (RFC 8414 §2) and the protected-resource metadata
//! (RFC 9728 §3, path-inserted) announce; [`crate::oauth::metadata`] builds its URLs from [`Endpoint::path`], so the
//! documents and the router cannot disagree. Every other path is [`Endpoint::Proxy`]: forwarded, behind a bearer.
//!
//! Invariants:
//! - A path maps to exactly one route, and the route alone decides the log/metric label ([`Endpoint::name`]), the
//!   rate-limit class ([`Endpoint::rate_class`]) and whether a CORS preflight is answered without forwarding.
//! - Labels are low-cardinality: a client id in `/register/{client_id}` never becomes part of one.

use crate::http::html::{FAVICON_PATH, LOGO_PATH};

/// The endpoint a request path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// RFC 8414 authorization-server metadata (also served as `openid-configuration`).
    AuthorizationServerMetadata,
    /// RFC 9728 protected-resource metadata, at the root or path-inserted for the resource.
    ProtectedResourceMetadata,
    /// Any other `/.well-known/` path: never forwarded.
    OtherWellKnown,
    /// RFC 7591 registration.
    Register,
    /// RFC 7592 client configuration, `/register/{client_id}`.
    ClientConfiguration,
    Authorize,
    Consent,
    Callback,
    Login,
    Token,
    Revoke,
    Introspect,
    Userinfo,
    Healthz,
    Readyz,
    /// The configured logo of the HTML pages ([`LOGO_PATH`]), also asked for by browsers as [`FAVICON_PATH`]:
    /// answered here (404 without a logo), never forwarded (it would be a 401 logged on every page view).
    Logo,
    /// Everything else: forwarded to the upstream.
    Proxy,
}

/// The path prefix of RFC 7592 client configuration endpoints.
pub const CLIENT_CONFIGURATION_PREFIX: &str = "/register/";

/// The endpoints that share a rate limit ([`crate::rate_limit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitClass {
    /// `/register`.
    Register,
    /// `/token`, `/revoke`, `/introspect`.
    Token,
    /// `/authorize`, `/consent`, `/login`.
    Authorize,
}

impl LimitClass {
    /// The policy's name in the RateLimit header fields.
    pub fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Token => "token",
            Self::Authorize => "authorize",
        }
    }
}

impl Endpoint {
    /// Parses a request path; `protected_resource_path` is the path-inserted RFC 9728 document's.
    pub fn parse(path: &str, protected_resource_path: &str) -> Self {
        match path {
            "/.well-known/oauth-authorization-server" | "/.well-known/openid-configuration" => {
                Self::AuthorizationServerMetadata
            }
            "/.well-known/oauth-protected-resource" => Self::ProtectedResourceMetadata,
            p if p == protected_resource_path => Self::ProtectedResourceMetadata,
            p if p.starts_with("/.well-known/") => Self::OtherWellKnown,
            p if p.starts_with(CLIENT_CONFIGURATION_PREFIX) => Self::ClientConfiguration,
            "/register" => Self::Register,
            "/authorize" => Self::Authorize,
            "/consent" => Self::Consent,
            "/callback" => Self::Callback,
            "/login" => Self::Login,
            "/token" => Self::Token,
            "/revoke" => Self::Revoke,
            "/introspect" => Self::Introspect,
            "/userinfo" => Self::Userinfo,
            "/healthz" => Self::Healthz,
            "/readyz" => Self::Readyz,
            LOGO_PATH | FAVICON_PATH => Self::Logo,
            _ => Self::Proxy,
        }
    }

    /// The path of an endpoint with a fixed path, as announced in the metadata documents.
    pub fn path(self) -> Option<&'static str> {
        Some(match self {
            Self::AuthorizationServerMetadata => "/.well-known/oauth-authorization-server",
            Self::ProtectedResourceMetadata => "/.well-known/oauth-protected-resource",
            Self::Register => "/register",
            Self::Authorize => "/authorize",
            Self::Consent => "/consent",
            Self::Callback => "/callback",
            Self::Login => "/login",
            Self::Token => "/token",
            Self::Revoke => "/revoke",
            Self::Introspect => "/introspect",
            Self::Userinfo => "/userinfo",
            Self::Healthz => "/healthz",
            Self::Readyz => "/readyz",
            Self::Logo => LOGO_PATH,
            Self::OtherWellKnown | Self::ClientConfiguration | Self::Proxy => return None,
        })
    }

    /// A low-cardinality name of the route, for logs and metrics. Client configuration is counted as `proxy`, as
    /// it always was: its path carries a client id.
    pub fn name(self) -> &'static str {
        match self {
            Self::AuthorizationServerMetadata | Self::ProtectedResourceMetadata | Self::OtherWellKnown => "metadata",
            Self::Register => "register",
            Self::Authorize => "authorize",
            Self::Consent => "consent",
            Self::Callback => "callback",
            Self::Login => "login",
            Self::Token => "token",
            Self::Revoke => "revoke",
            Self::Introspect => "introspect",
            Self::Userinfo => "userinfo",
            Self::Healthz => "healthz",
            Self::Readyz => "readyz",
            Self::Logo => "logo",
            Self::ClientConfiguration | Self::Proxy => "proxy",
        }
    }

    /// The rate-limit class of the route, and whether its errors are shown as pages.
    pub fn rate_class(self) -> Option<(LimitClass, bool)> {
        match self {
            Self::Register | Self::ClientConfiguration => Some((LimitClass::Register, false)),
            Self::Token | Self::Revoke | Self::Introspect => Some((LimitClass::Token, false)),
            Self::Authorize | Self::Consent | Self::Login => Some((LimitClass::Authorize, true)),
            _ => None,
        }
    }

    /// Whether an `OPTIONS` request is a CORS preflight the proxy answers itself even without
    /// `Access-Control-Request-Method`: on its own endpoints, yes; on forwarded paths only a real preflight is.
    pub fn answers_every_options(self) -> bool {
        !matches!(self, Self::Proxy | Self::ClientConfiguration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRM: &str = "/.well-known/oauth-protected-resource/mcp";

    #[test]
    fn every_fixed_path_parses_back_to_its_route() {
        let all = [
            Endpoint::AuthorizationServerMetadata,
            Endpoint::ProtectedResourceMetadata,
            Endpoint::Register,
            Endpoint::Authorize,
            Endpoint::Consent,
            Endpoint::Callback,
            Endpoint::Login,
            Endpoint::Token,
            Endpoint::Revoke,
            Endpoint::Introspect,
            Endpoint::Userinfo,
            Endpoint::Healthz,
            Endpoint::Readyz,
            Endpoint::Logo,
        ];
        for route in all {
            let path = route.path().unwrap_or_default();
            assert_eq!(Endpoint::parse(path, PRM), route, "{path}");
        }
    }

    #[test]
    fn metadata_client_configuration_and_proxy_paths() {
        assert_eq!(Endpoint::parse("/.well-known/openid-configuration", PRM), Endpoint::AuthorizationServerMetadata);
        assert_eq!(Endpoint::parse(PRM, PRM), Endpoint::ProtectedResourceMetadata);
        assert_eq!(Endpoint::parse("/.well-known/other", PRM), Endpoint::OtherWellKnown);
        assert_eq!(Endpoint::parse("/register/abc", PRM), Endpoint::ClientConfiguration);
        assert_eq!(Endpoint::parse("/registerx", PRM), Endpoint::Proxy);
        assert_eq!(Endpoint::parse("/mcp", PRM), Endpoint::Proxy);
        assert_eq!(Endpoint::parse("/token/", PRM), Endpoint::Proxy, "no trailing-slash aliases");
        assert_eq!(Endpoint::parse(FAVICON_PATH, PRM), Endpoint::Logo, "a browser's icon request stays here");
    }

    #[test]
    fn labels_classes_and_preflights() {
        assert_eq!(Endpoint::parse("/register/abc", PRM).name(), "proxy");
        assert_eq!(Endpoint::OtherWellKnown.name(), "metadata");
        assert_eq!(Endpoint::ClientConfiguration.rate_class(), Some((LimitClass::Register, false)));
        assert_eq!(Endpoint::Consent.rate_class(), Some((LimitClass::Authorize, true)));
        assert_eq!(Endpoint::Callback.rate_class(), None);
        assert!(Endpoint::Token.answers_every_options());
        assert!(!Endpoint::Proxy.answers_every_options() && !Endpoint::ClientConfiguration.answers_every_options());
    }
}
