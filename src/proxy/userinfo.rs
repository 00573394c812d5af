//! The userinfo endpoint (OIDC Core §5.3 style): the claims of the user behind a bearer token (RFC 6750 §2.1).
//!
//! Invariant: the same bearer lookup as proxied requests ([`crate::proxy::bearer::authenticate`]): a token in the
//! query is refused, an expired or revoked one is 401 with the proxy's challenge.

use http::{Request, Response, StatusCode};

use super::{bearer, Context};
use crate::error::Error;
use crate::http::{json_response, no_store, Body, RequestBody};

/// `GET|POST /userinfo`.
pub async fn handle(cx: &Context<'_>, req: &Request<RequestBody>) -> Result<Response<Body>, Error> {
    let grant = bearer::authenticate(cx, req.headers(), req.uri().query()).await?;
    let body = serde_json::to_value(&grant.identity).map_err(|e| Error::Internal(e.to_string()))?;
    let mut resp = json_response(StatusCode::OK, &body);
    no_store(&mut resp);
    Ok(resp)
}
