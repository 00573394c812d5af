//! The records the store writes outside the process, in one place: what a snapshot file holds (the snapshot's own
//! framing stays in [`super::snapshot`]) and what the Redis backend keeps under its keys ([`super::redis`]), with
//! the conversions between them and the model ([`super::model`]). `postcard` encodes every one of them: fields are
//! positional, so a field is only ever added at the end, with `#[serde(default)]`, and never removed.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::*;
use crate::clock::UnixTime;

// ---- shared by the snapshot and the Redis backend ----------------------------------------------------------------

#[derive(Serialize, Deserialize)]
pub(super) struct TokensRec {
    pub(super) access_token: String,
    pub(super) refresh_token: Option<String>,
    pub(super) expires_at: UnixTime,
    pub(super) scope: Option<String>,
}

/// [`Identity`] without its JSON-only `skip_serializing_if` (postcard needs every field).
#[derive(Serialize, Deserialize)]
pub(super) struct IdentityRec {
    pub(super) sub: String,
    pub(super) name: Option<String>,
    pub(super) email: Option<String>,
    pub(super) preferred_username: Option<String>,
    pub(super) tid: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct LoginRec {
    pub(super) identity: IdentityRec,
    pub(super) upstream: Option<TokensRec>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct ClientRec {
    pub(super) client_id: String,
    pub(super) secret_hash: Option<[u8; 32]>,
    pub(super) auth_method: String,
    pub(super) redirect_uris: Vec<String>,
    pub(super) client_name: Option<String>,
    pub(super) scope: Option<String>,
    pub(super) grant_types: Vec<String>,
    pub(super) response_types: Vec<String>,
    pub(super) issued_at: UnixTime,
    pub(super) first_authorized_at: UnixTime,
    pub(super) registration_token: Option<[u8; 32]>,
}

/// The public keys of a `private_key_jwt` client, stored beside its [`ClientRec`] (a record of its own, so that
/// files and Redis values written before `private_key_jwt` existed still read).
#[derive(Serialize, Deserialize)]
pub(super) struct ClientKeysRec {
    /// The inline JWK Set, as registered.
    pub(super) jwks: Option<String>,
    pub(super) jwks_uri: Option<String>,
    /// `token_endpoint_auth_signing_alg`.
    pub(super) signing_alg: Option<String>,
}

/// The groups, roles and overage mark of one identity.
#[derive(Serialize, Deserialize, Default)]
pub(super) struct MembershipRec {
    pub(super) groups: Vec<String>,
    pub(super) roles: Vec<String>,
    pub(super) overage: bool,
}

impl MembershipRec {
    pub(super) fn of(i: &Identity) -> Option<Self> {
        let any = !i.groups.is_empty() || !i.roles.is_empty() || i.groups_overage;
        any.then(|| Self { groups: i.groups.clone(), roles: i.roles.clone(), overage: i.groups_overage })
    }

    pub(super) fn apply(self, i: &mut Identity) {
        (i.groups, i.roles, i.groups_overage) = (self.groups, self.roles, self.overage);
    }
}

pub(super) fn login_rec(credential: &UpstreamCredential, identity: &Identity) -> LoginRec {
    let i = identity.clone();
    LoginRec {
        identity: IdentityRec {
            sub: i.sub,
            name: i.name,
            email: i.email,
            preferred_username: i.preferred_username,
            tid: i.tid,
        },
        upstream: match credential {
            UpstreamCredential::Tokens(t) => Some(TokensRec {
                access_token: t.access_token().to_owned(),
                refresh_token: t.refresh_token().map(str::to_owned),
                expires_at: t.expires_at,
                scope: t.scope.clone(),
            }),
            UpstreamCredential::Local => None,
        },
    }
}

pub(super) fn login_from(rec: LoginRec) -> Option<UpstreamLogin> {
    let credential = match rec.upstream {
        Some(t) => UpstreamCredential::Tokens(
            UpstreamTokens::new(t.access_token, t.refresh_token, t.expires_at, t.scope).ok()?,
        ),
        None => UpstreamCredential::Local,
    };
    let i = rec.identity;
    let identity = Identity {
        sub: i.sub,
        name: i.name,
        email: i.email,
        preferred_username: i.preferred_username,
        tid: i.tid,
        ..Identity::default()
    };
    Some(UpstreamLogin { credential, identity })
}

/// A client as stored outside the process (snapshot, Redis).
pub(super) fn client_rec(c: &Client) -> ClientRec {
    ClientRec {
        client_id: c.client_id.clone(),
        secret_hash: c.secret_hash.map(|h| h.0),
        auth_method: c.auth_method.as_str().to_owned(),
        redirect_uris: c.redirect_uris.clone(),
        client_name: c.client_name.clone(),
        scope: c.scope.clone(),
        grant_types: c.grant_types.clone(),
        response_types: c.response_types.clone(),
        issued_at: c.issued_at,
        first_authorized_at: c.first_authorized_at.load(std::sync::atomic::Ordering::Relaxed),
        registration_token: c.registration_token.map(|h| h.0),
    }
}

/// The keys of a client, when it has any to store.
pub(super) fn client_keys_rec(c: &Client) -> Option<ClientKeysRec> {
    if c.keys.is_none() && c.signing_alg.is_none() {
        return None;
    }
    let (jwks, jwks_uri) = match &c.keys {
        Some(ClientKeys::Inline(set)) => (Some(set.json().to_owned()), None),
        Some(ClientKeys::Uri(uri)) => (None, Some(uri.clone())),
        None => (None, None),
    };
    Some(ClientKeysRec { jwks, jwks_uri, signing_alg: c.signing_alg.map(|a| crate::jwk::algorithm_name(a).to_owned()) })
}

/// A client as one value outside the process (Redis): its [`ClientRec`], followed by its [`ClientKeysRec`] when
/// it has keys. A value written before keys existed is the record alone, and reads as a client without keys.
pub(super) fn encode_client(c: &Client) -> Result<Vec<u8>, postcard::Error> {
    let mut bytes = postcard::to_allocvec(&client_rec(c))?;
    if let Some(keys) = client_keys_rec(c) {
        bytes.extend_from_slice(&postcard::to_allocvec(&keys)?);
    }
    Ok(bytes)
}

/// The client [`encode_client`] wrote; `None` when it does not decode.
pub(super) fn decode_client(bytes: &[u8]) -> Option<Client> {
    let (rec, rest) = postcard::take_from_bytes::<ClientRec>(bytes).ok()?;
    let keys = if rest.is_empty() { None } else { Some(postcard::from_bytes::<ClientKeysRec>(rest).ok()?) };
    client_from(rec, keys)
}

/// The client [`client_rec`] (and [`client_keys_rec`]) stored; `None` for an unknown authentication method, or a
/// `private_key_jwt` client whose keys do not read.
pub(super) fn client_from(c: ClientRec, keys: Option<ClientKeysRec>) -> Option<Client> {
    let auth_method = ClientAuthMethod::parse(&c.auth_method)?;
    let (keys, signing_alg) = match keys {
        None => (None, None),
        Some(k) => {
            let keys = match (k.jwks, k.jwks_uri) {
                (Some(json), _) => Some(ClientKeys::Inline(Arc::new(crate::jwk::KeySet::from_stored(&json).ok()?))),
                (None, Some(uri)) => Some(ClientKeys::Uri(uri)),
                (None, None) => None,
            };
            let alg = match k.signing_alg {
                Some(name) => Some(crate::jwk::parse_algorithm(&name)?),
                None => None,
            };
            (keys, alg)
        }
    };
    if auth_method == ClientAuthMethod::PrivateKeyJwt && keys.is_none() {
        return None;
    }
    Some(Client {
        auth_method,
        keys,
        signing_alg,
        client_id: c.client_id,
        secret_hash: c.secret_hash.map(TokenHash),
        redirect_uris: c.redirect_uris,
        client_name: c.client_name,
        scope: c.scope,
        grant_types: c.grant_types,
        response_types: c.response_types,
        issued_at: c.issued_at,
        first_authorized_at: c.first_authorized_at.into(),
        registration_token: c.registration_token.map(TokenHash),
        sign_in_started_at: Default::default(),
    })
}

// ---- the Redis backend's ------------------------------------------------------------------------------------

/// A grant as kept in Redis (sealed).
#[derive(Serialize, Deserialize)]
pub(super) struct GrantRecord {
    pub(super) client_id: String,
    pub(super) scope: String,
    pub(super) resource: Option<String>,
    pub(super) login: LoginRec,
    pub(super) created_at: UnixTime,
    pub(super) expires_at: UnixTime,
    pub(super) upstream_obtained_at: UnixTime,
    pub(super) upstream_refreshed_at: UnixTime,
    /// The identity's groups, roles and overage mark (`[[policy.tools]]`), which `LoginRec` does not carry.
    pub(super) membership: Option<MembershipRec>,
    /// The IdP tokens (a `LoginRec` without identity) sealed with the grant's data key; then `login` holds the
    /// identity only. `None` for a grant imported from a snapshot: `login` holds them, under the configured key.
    #[serde(default)]
    pub(super) idp: Option<Vec<u8>>,
}

/// A live code as kept in Redis (sealed).
#[derive(Serialize, Deserialize)]
pub(super) struct CodeRecord {
    pub(super) request: AuthorizationRequest,
    pub(super) expires_at: UnixTime,
    /// The identity; with the IdP tokens too when `idp` is empty (a code imported from a snapshot).
    pub(super) login: LoginRec,
    pub(super) membership: Option<MembershipRec>,
    /// The IdP tokens sealed with the code's own data key, which `wrapped` holds under the code.
    #[serde(default)]
    pub(super) idp: Vec<u8>,
    #[serde(default)]
    pub(super) wrapped: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct AccessRecord {
    pub(super) grant: u128,
    pub(super) expires_at: UnixTime,
    pub(super) scope: String,
    /// The grant's data key wrapped under this token (empty: imported, or a grant without one).
    #[serde(default)]
    pub(super) wrapped: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct FamilyRecord {
    pub(super) grant: u128,
    pub(super) generation: u32,
    pub(super) current: [u8; 32],
    pub(super) expires_at: UnixTime,
    pub(super) rotated: Option<([u8; 32], UnixTime, Vec<u8>)>,
    /// The grant's data key wrapped under the current token (empty: imported, or a grant without one).
    #[serde(default)]
    pub(super) wrapped: Vec<u8>,
}

/// A `[[routes]]` token as kept in Redis (sealed with the grant's data key).
#[derive(Serialize, Deserialize)]
pub(super) struct RouteRecord {
    pub(super) obtained_at: UnixTime,
    pub(super) tokens: LoginRec,
}
