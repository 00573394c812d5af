//! Encrypted snapshots of the store (SPEC §8).
//!
//! File format, version 2: `b"DCRPSNAP"` ‖ version byte ‖ ChaCha20-Poly1305(nonce ‖ ciphertext ‖ tag) with the
//! first 9 bytes as associated data; the plaintext is the postcard encoding of `SnapshotV2`. Tokens the proxy
//! issued appear only as their SHA-256 hashes (refresh tokens: the family id's hash, the generation, the hashes of
//! the current and the just-rotated token); the upstream (IdP) tokens only inside the ciphertext.
//!
//! The encoding of `SnapshotV2` may be followed by that of `Memberships`: the id_token's groups and roles of the
//! grants and codes that have any (the tool policy's input). Readers that predate it ignore the trailing bytes
//! (postcard reads a value and leaves the rest), and a file without it reads as "no groups": no version change.
//!
//! Version 1 (one record per refresh token ever rotated, and per-grant access scopes absent) is refused with a
//! message saying so: its refresh tokens have no family and cannot be carried over.
//!
//! Writing: the store is copied shard by shard (each `DashMap` shard is read-locked only while it is copied, so
//! requests are not paused), encoded and sealed off the async runtime, written to `<path>.tmp` created with mode
//! 0600, fsynced, renamed over `<path>`, and the directory fsynced: a crash leaves the old or the new file, never a
//! torn one.
//!
//! Loading: a missing file is an empty store; a file that is not a snapshot, has another version, does not
//! authenticate (wrong key, flipped byte, truncation) or does not decode is an error that names the file and the
//! cause. Expired entries are dropped.
//!
//! Not kept: authorizations waiting for consent or the IdP (a browser flow in progress when the proxy restarts
//! starts again), rate-limit buckets.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::*;
use crate::clock::UnixTime;
use crate::config::SnapshotKey;
use crate::crypto::{Sealer, TokenHash};

const MAGIC: &[u8; 8] = b"DCRPSNAP";
const VERSION: u8 = 2;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("snapshot {path} is not a dcr-proxy snapshot (bad header or truncated)")]
    NotASnapshot { path: PathBuf },
    #[error(
        "snapshot {path} has format version {version}; this build reads version {VERSION} only (a version-1 \
         snapshot is from a dcr-proxy before refresh-token families; move it away, or set \
         store.start_empty_on_bad_snapshot = true, and users sign in again)"
    )]
    Version { path: PathBuf, version: u8 },
    #[error("snapshot {path} cannot be decrypted: wrong key (DCR_PROXY_SNAPSHOT_KEY / store.snapshot_key_file) or a corrupted file")]
    Decrypt { path: PathBuf },
    #[error("snapshot {path} is corrupted: {reason}")]
    Decode { path: PathBuf, reason: String },
}

#[derive(Serialize, Deserialize)]
pub(super) struct TokensRec {
    access_token: String,
    refresh_token: Option<String>,
    expires_at: UnixTime,
    scope: Option<String>,
}

/// [`Identity`] without its JSON-only `skip_serializing_if` (postcard needs every field).
#[derive(Serialize, Deserialize)]
pub(super) struct IdentityRec {
    sub: String,
    name: Option<String>,
    email: Option<String>,
    preferred_username: Option<String>,
    tid: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct LoginRec {
    identity: IdentityRec,
    upstream: Option<TokensRec>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct ClientRec {
    client_id: String,
    secret_hash: Option<[u8; 32]>,
    auth_method: String,
    redirect_uris: Vec<String>,
    client_name: Option<String>,
    scope: Option<String>,
    grant_types: Vec<String>,
    response_types: Vec<String>,
    issued_at: UnixTime,
    first_authorized_at: UnixTime,
    registration_token: Option<[u8; 32]>,
}

/// A grant's refresh-token family.
#[derive(Serialize, Deserialize)]
struct FamilyRec {
    family_hash: [u8; 32],
    generation: u32,
    current: [u8; 32],
    expires_at: UnixTime,
    /// The just-rotated token: hash, time of rotation, sealed successor.
    rotated: Option<([u8; 32], UnixTime, Vec<u8>)>,
}

#[derive(Serialize, Deserialize)]
struct AccessRec {
    hash: [u8; 32],
    expires_at: UnixTime,
    /// The token's scope when narrower than the grant's.
    scope: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct GrantRec {
    id: u128,
    client_id: String,
    scope: String,
    resource: Option<String>,
    login: LoginRec,
    created_at: UnixTime,
    expires_at: UnixTime,
    upstream_obtained_at: UnixTime,
    upstream_refreshed_at: UnixTime,
    access: Vec<AccessRec>,
    refresh: Option<FamilyRec>,
}

#[derive(Serialize, Deserialize)]
struct CodeRec {
    hash: [u8; 32],
    client_id: String,
    redirect_uri: String,
    redirect_uri_explicit: bool,
    code_challenge: String,
    scope: Vec<String>,
    resource: Option<String>,
    expires_at: UnixTime,
    login: LoginRec,
}

/// Everything a snapshot holds.
#[derive(Serialize, Deserialize)]
struct SnapshotV2 {
    written_at: UnixTime,
    clients: Vec<ClientRec>,
    grants: Vec<GrantRec>,
    codes: Vec<CodeRec>,
    spent_codes: Vec<([u8; 32], u128, UnixTime)>,
}

/// The groups, roles and overage mark of one identity.
#[derive(Serialize, Deserialize, Default)]
pub(super) struct MembershipRec {
    groups: Vec<String>,
    roles: Vec<String>,
    overage: bool,
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

/// The section after `SnapshotV2`: memberships by grant id and by code hash.
#[derive(Serialize, Deserialize, Default)]
struct Memberships {
    grants: Vec<(u128, MembershipRec)>,
    codes: Vec<([u8; 32], MembershipRec)>,
}

fn collect_memberships(store: &Store) -> Memberships {
    Memberships {
        grants: store
            .grants
            .iter()
            .filter(|g| !g.is_revoked())
            .filter_map(|g| MembershipRec::of(&g.identity).map(|m| (g.id.0, m)))
            .collect(),
        codes: store
            .codes
            .iter()
            .filter_map(|c| MembershipRec::of(&c.login.identity).map(|m| (c.key().0, m)))
            .collect(),
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

/// The client [`client_rec`] stored; `None` for an unknown authentication method.
pub(super) fn client_from(c: ClientRec) -> Option<Client> {
    Some(Client {
        auth_method: ClientAuthMethod::parse(&c.auth_method)?,
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

fn collect(store: &Store, now: UnixTime) -> SnapshotV2 {
    let clients = store.clients.iter().map(|c| client_rec(&c)).collect();
    let mut grants: Vec<GrantRec> = Vec::with_capacity(store.grants.len());
    let mut index: HashMap<u128, usize> = HashMap::with_capacity(store.grants.len());
    for g in store.grants.iter().filter(|g| !g.is_revoked()) {
        index.insert(g.id.0, grants.len());
        grants.push(GrantRec {
            id: g.id.0,
            client_id: g.client_id.clone(),
            scope: g.scope.to_string(),
            resource: g.resource.clone(),
            login: login_rec(&g.upstream(), &g.identity),
            created_at: g.created_at,
            expires_at: g.expires_at(),
            upstream_obtained_at: g.upstream_obtained_at.load(std::sync::atomic::Ordering::Relaxed),
            upstream_refreshed_at: g.upstream_refreshed_at.load(std::sync::atomic::Ordering::Relaxed),
            access: Vec::new(),
            refresh: None,
        });
    }
    for t in store.access_tokens.iter().filter(|t| t.expires_at > now) {
        if let Some(&i) = index.get(&t.grant.id.0) {
            let scope = (*t.scope != *t.grant.scope).then(|| t.scope.to_string());
            grants[i].access.push(AccessRec { hash: t.key().0, expires_at: t.expires_at, scope });
        }
    }
    for f in store.refresh_families.iter().filter(|f| f.expires_at > now) {
        if let Some(&i) = index.get(&f.grant.id.0) {
            grants[i].refresh = Some(FamilyRec {
                family_hash: f.key().0,
                generation: f.generation,
                current: f.current.0,
                expires_at: f.expires_at,
                rotated: f.rotated.as_ref().map(|r| (r.hash.0, r.at, r.sealed_successor.clone())),
            });
        }
    }
    let codes = store
        .codes
        .iter()
        .filter(|c| c.expires_at > now)
        .map(|c| CodeRec {
            hash: c.key().0,
            client_id: c.request.client_id.clone(),
            redirect_uri: c.request.redirect_uri.clone(),
            redirect_uri_explicit: c.request.redirect_uri_explicit,
            code_challenge: c.request.code_challenge.clone(),
            scope: c.request.scope.clone(),
            resource: c.request.resource.clone(),
            expires_at: c.expires_at,
            login: login_rec(&c.login.credential, &c.login.identity),
        })
        .collect();
    let spent_codes =
        store.spent_codes.iter().filter(|c| c.expires_at > now).map(|c| (c.key().0, c.grant.0, c.expires_at)).collect();
    SnapshotV2 { written_at: now, clients, grants, codes, spent_codes }
}

/// Writes the store to `path` atomically. Blocking: call it from `spawn_blocking`.
pub fn write(store: &Store, now: UnixTime, path: &Path, key: &SnapshotKey) -> Result<usize, SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.to_owned(), source };
    let snapshot = collect(store, now);
    let encode_error = |e: postcard::Error| SnapshotError::Decode { path: path.to_owned(), reason: e.to_string() };
    let mut plain = postcard::to_allocvec(&snapshot).map_err(encode_error)?;
    drop(snapshot);
    plain.extend(postcard::to_allocvec(&collect_memberships(store)).map_err(encode_error)?);
    let mut header = MAGIC.to_vec();
    header.push(VERSION);
    let mut sealed = plain;
    let nonce = Sealer::new(&key.0).seal_in_place(&header, &mut sealed);
    let tmp = path.with_extension("tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(io)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut file);
        out.write_all(&header).map_err(io)?;
        out.write_all(&nonce).map_err(io)?;
        out.write_all(&sealed).map_err(io)?;
        out.flush().map_err(io)?;
        drop(out);
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(header.len() + nonce.len() + sealed.len())
}

/// Reads a snapshot with the current key or, during a key rotation, the previous one.
pub fn load_rotating(
    path: &Path,
    key: &SnapshotKey,
    previous: Option<&SnapshotKey>,
    now: UnixTime,
) -> Result<Store, SnapshotError> {
    match (load(path, key, now), previous) {
        (Err(SnapshotError::Decrypt { .. }), Some(old)) => {
            let store = load(path, old, now)?;
            tracing::info!("snapshot read with the previous key; the next snapshot is written with the new key");
            Ok(store)
        }
        (result, _) => result,
    }
}

/// Reads a snapshot into a new store, dropping what expired. A missing file is an empty store.
pub fn load(path: &Path, key: &SnapshotKey, now: UnixTime) -> Result<Store, SnapshotError> {
    let mut data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Store::new()),
        Err(source) => return Err(SnapshotError::Io { path: path.to_owned(), source }),
    };
    if data.len() < MAGIC.len() + 1 || &data[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotASnapshot { path: path.to_owned() });
    }
    let version = data[MAGIC.len()];
    if version != VERSION {
        return Err(SnapshotError::Version { path: path.to_owned(), version });
    }
    let (header, sealed) = data.split_at_mut(MAGIC.len() + 1);
    let range = Sealer::new(&key.0)
        .open_in_place(header, sealed)
        .map_err(|_| SnapshotError::Decrypt { path: path.to_owned() })?;
    let decode_error = |e: postcard::Error| SnapshotError::Decode { path: path.to_owned(), reason: e.to_string() };
    let (snapshot, rest): (SnapshotV2, &[u8]) = postcard::take_from_bytes(&sealed[range]).map_err(decode_error)?;
    let memberships: Memberships =
        if rest.is_empty() { Memberships::default() } else { postcard::from_bytes(rest).map_err(decode_error)? };
    Ok(rebuild(snapshot, memberships, now))
}

fn rebuild(s: SnapshotV2, memberships: Memberships, now: UnixTime) -> Store {
    let mut grant_members: HashMap<u128, MembershipRec> = memberships.grants.into_iter().collect();
    let mut code_members: HashMap<[u8; 32], MembershipRec> = memberships.codes.into_iter().collect();
    let store = Store::new();
    for client in s.clients.into_iter().filter_map(client_from) {
        store.clients.insert(client.client_id.clone(), Arc::new(client));
    }
    for g in s.grants.into_iter().filter(|g| g.expires_at > now) {
        let Some(mut login) = login_from(g.login) else {
            continue;
        };
        if let Some(m) = grant_members.remove(&g.id) {
            m.apply(&mut login.identity);
        }
        let grant = Grant::restore(GrantId(g.id), g.client_id, g.scope, g.resource, login, g.created_at, g.expires_at);
        grant.upstream_obtained_at.store(g.upstream_obtained_at, std::sync::atomic::Ordering::Relaxed);
        grant.upstream_refreshed_at.store(g.upstream_refreshed_at, std::sync::atomic::Ordering::Relaxed);
        for a in g.access.into_iter().filter(|a| a.expires_at > now) {
            let scope = a.scope.map_or_else(|| grant.scope.clone(), Arc::from);
            store
                .access_tokens
                .insert(TokenHash(a.hash), AccessToken { grant: grant.clone(), expires_at: a.expires_at, scope });
        }
        if let Some(f) = g.refresh.filter(|f| f.expires_at > now) {
            let rotated = f
                .rotated
                .map(|(hash, at, sealed_successor)| Box::new(Rotation { hash: TokenHash(hash), at, sealed_successor }));
            store.refresh_families.insert(
                TokenHash(f.family_hash),
                RefreshFamily {
                    grant: grant.clone(),
                    generation: f.generation,
                    current: TokenHash(f.current),
                    expires_at: f.expires_at,
                    rotated,
                },
            );
        }
        store.grants.insert(grant.id, grant);
    }
    for c in s.codes.into_iter().filter(|c| c.expires_at > now) {
        let Some(mut login) = login_from(c.login) else {
            continue;
        };
        if let Some(m) = code_members.remove(&c.hash) {
            m.apply(&mut login.identity);
        }
        store.codes.insert(
            TokenHash(c.hash),
            AuthorizationCode {
                request: AuthorizationRequest {
                    client_id: c.client_id,
                    redirect_uri: c.redirect_uri,
                    redirect_uri_explicit: c.redirect_uri_explicit,
                    state: None,
                    code_challenge: c.code_challenge,
                    scope: c.scope,
                    resource: c.resource,
                },
                expires_at: c.expires_at,
                login,
            },
        );
    }
    for (hash, grant, expires_at) in s.spent_codes.into_iter().filter(|c| c.2 > now) {
        store.spent_codes.insert(TokenHash(hash), SpentCode { grant: GrantId(grant), expires_at });
    }
    store
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_store() -> (Store, String) {
        let store = Store::new();
        let tokens =
            UpstreamTokens::new("upstream-access-token-value".into(), Some("upstream-refresh".into()), 5000, None);
        let login = UpstreamLogin {
            credential: UpstreamCredential::Tokens(tokens.unwrap_or_else(|_| unreachable!())),
            identity: Identity { sub: "alice".into(), ..Identity::default() },
        };
        let grant = Grant::new("c1".into(), vec!["openid".into()], None, login, 100);
        grant.extend_to(9000);
        let access = crate::crypto::random_token();
        store.access_tokens.insert(TokenHash::of(&access), AccessToken::new(grant.clone(), 4000));
        store.access_tokens.insert(TokenHash::of("expired"), AccessToken::new(grant.clone(), 150));
        store.grants.insert(grant.id, grant);
        (store, access)
    }

    #[test]
    fn groups_and_roles_round_trip_and_a_file_without_them_still_loads() {
        let dir = std::env::temp_dir().join(format!("dcrp-snap-{}", crate::crypto::random_token()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("state.snapshot");
        let key = SnapshotKey([5u8; 32]);
        let store = Store::new();
        let identity = Identity {
            sub: "bob".into(),
            groups: vec!["g-admins".into()],
            roles: vec!["Admin".into()],
            groups_overage: true,
            ..Identity::default()
        };
        let grant = Grant::new(
            "c1".into(),
            vec!["openid".into()],
            None,
            UpstreamLogin { credential: UpstreamCredential::Local, identity },
            100,
        );
        grant.extend_to(9000);
        store.grants.insert(grant.id, grant.clone());
        assert!(write(&store, 200, &path, &key).is_ok());
        let loaded = load(&path, &key, 200).unwrap_or_default();
        let back = loaded.grants.get(&grant.id).map(|g| g.identity.clone()).unwrap_or_default();
        assert_eq!(
            (back.groups, back.roles, back.groups_overage),
            (vec!["g-admins".into()], vec!["Admin".into()], true)
        );

        // A file as written before the membership section: the SnapshotV2 encoding alone.
        let plain = postcard::to_allocvec(&collect(&store, 200)).unwrap_or_default();
        let mut header = MAGIC.to_vec();
        header.push(VERSION);
        let mut sealed = plain;
        let nonce = Sealer::new(&key.0).seal_in_place(&header, &mut sealed);
        let _ = std::fs::write(&path, [header, nonce.to_vec(), sealed].concat());
        let loaded = load(&path, &key, 200).unwrap_or_default();
        let back = loaded.grants.get(&grant.id).map(|g| g.identity.clone()).unwrap_or_default();
        assert_eq!((back.sub.as_str(), back.groups.len()), ("bob", 0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn refresh_families_narrowed_scopes_and_refresh_times_round_trip() {
        let dir = std::env::temp_dir().join(format!("dcrp-snap-{}", crate::crypto::random_token()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("state.snapshot");
        let key = SnapshotKey([3u8; 32]);
        let (store, access) = sample_store();
        let grant = store.grants.iter().next().map(|g| g.clone()).unwrap_or_else(|| unreachable!());
        grant.upstream_refreshed_at.store(150, std::sync::atomic::Ordering::Relaxed);
        store.access_tokens.alter(&TokenHash::of(&access), |_, mut t| {
            t.scope = Arc::from("narrow");
            t
        });
        let name = RefreshTokenName { family: FamilyId::random(), generation: 9 };
        let (current, rotated) = (name.mint(), RefreshTokenName { generation: 8, ..name }.mint());
        let rotation = Rotation { hash: TokenHash::of(&rotated), at: 190, sealed_successor: vec![1, 2, 3] };
        store.refresh_families.insert(
            name.family.hash(),
            RefreshFamily {
                grant,
                generation: 9,
                current: TokenHash::of(&current),
                expires_at: 9000,
                rotated: Some(Box::new(rotation.clone())),
            },
        );
        assert!(write(&store, 200, &path, &key).is_ok());
        let loaded = load(&path, &key, 200).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        let (g, scope) = loaded.access(&TokenHash::of(&access), 200).unwrap_or_else(|| unreachable!());
        assert_eq!((&*scope, &*g.scope), ("narrow", "openid"));
        assert_eq!(g.upstream_refreshed_at.load(std::sync::atomic::Ordering::Relaxed), 150);
        let family = loaded.refresh_families.get(&name.family.hash()).map(|f| f.clone());
        let family = family.unwrap_or_else(|| unreachable!());
        assert_eq!(family.classify(9, &TokenHash::of(&current)), Presented::Current);
        assert_eq!(family.classify(8, &TokenHash::of(&rotated)), Presented::Rotated(&rotation));
        assert_eq!(loaded.refresh_token(&current).map(|(_, exp, cur)| (exp, cur)), Some((9000, true)));
    }

    #[test]
    fn snapshot_round_trips_and_drops_expired_entries() {
        let dir = std::env::temp_dir().join(format!("dcrp-snap-{}", crate::crypto::random_token()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("state.snapshot");
        let key = SnapshotKey([3u8; 32]);
        let (store, access) = sample_store();
        assert!(write(&store, 200, &path, &key).is_ok());
        let bytes = std::fs::read(&path).unwrap_or_default();
        let needle = b"upstream-access-token-value";
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "upstream token in clear");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
            assert_eq!(mode, 0o600);
        }
        let loaded = load(&path, &key, 200).map_err(|e| e.to_string());
        assert!(loaded.is_ok(), "{:?}", loaded.as_ref().err());
        let loaded = loaded.unwrap_or_default();
        assert!(loaded.access_token(&TokenHash::of(&access), 200).is_some());
        assert_eq!(loaded.access_tokens.len(), 1, "expired access token dropped");
        assert!(matches!(load(&path, &SnapshotKey([4u8; 32]), 200), Err(SnapshotError::Decrypt { .. })));
        // Key rotation: the new key with the old one as previous reads it.
        assert!(load_rotating(&path, &SnapshotKey([4u8; 32]), Some(&key), 200).is_ok());
        assert!(load_rotating(&path, &SnapshotKey([4u8; 32]), Some(&SnapshotKey([5u8; 32])), 200).is_err());
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        let _ = std::fs::write(&path, &flipped);
        assert!(matches!(load(&path, &key, 200), Err(SnapshotError::Decrypt { .. })));
        let _ = std::fs::write(&path, &bytes[..bytes.len() / 2]);
        assert!(matches!(load(&path, &key, 200), Err(SnapshotError::Decrypt { .. })));
        let _ = std::fs::write(&path, b"hello");
        assert!(matches!(load(&path, &key, 200), Err(SnapshotError::NotASnapshot { .. })));
        assert!(load(&dir.join("missing"), &key, 200).is_ok_and(|s| s.grants.is_empty()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
