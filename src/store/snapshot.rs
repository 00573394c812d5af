//! Encrypted snapshots of the store (SPEC §8).
//!
//! File format, version 3 (written since issue 13; built to write and read 10⁶ grants in seconds):
//!
//! ```text
//! header  = b"DCRPSNAP" ‖ 0x03 ‖ chunk size (u32, big-endian) ‖ salt (32 random bytes)      45 bytes
//! body    = the plaintext below, sealed chunk by chunk (STREAM over AES-256-GCM, see sealed_stream):
//!           chunk i = AES-256-GCM(key = HMAC-SHA256(snapshot key, label ‖ salt),
//!                                 nonce = 0⁵⁶ ‖ i (u32 BE) ‖ last flag, aad = header) ‖ tag (16)
//!           every chunk holds `chunk size` plaintext bytes but the last, which holds fewer (maybe none)
//! plaintext = record*, each u32 (little-endian) length ‖ postcard(Record)
//!           Meta, Client*, Grant*, Access*, Family*, Code*, Spent*, End { records before it }
//! ```
//!
//! Tokens the proxy issued appear only as their SHA-256 hashes (refresh tokens: the family id's hash, the
//! generation, the hashes of the current and the just-rotated token); the upstream (IdP) tokens only inside the
//! ciphertext. A grant's and a code's groups and roles are in its record.
//!
//! Version 2 (still read, no longer written): `b"DCRPSNAP"` ‖ 0x02 ‖ ChaCha20-Poly1305(nonce ‖ ciphertext ‖ tag)
//! with the first 9 bytes as associated data, over the postcard encoding of `SnapshotV2` optionally followed by
//! that of `Memberships` (a file without it reads as "no groups"). Version 1 (one record per refresh token ever
//! rotated, and per-grant access scopes absent) is refused with a message saying so: its refresh tokens have no
//! family and cannot be carried over.
//!
//! Writing (on a blocking thread, never on the runtime): the maps are listed shard by shard under each shard's
//! read lock — handles only (an `Arc` per grant, the hash, grant id, expiry and narrowed scope per access token,
//! keys of families and codes), a few percent of the store — then each record is encoded from the live entry
//! without any map lock (a grant's credential lock only while its record is encoded into a scratch buffer) and
//! streamed into chunks. Grants (most of the bytes) are encoded in batches on one thread per core, batch `b` on
//! thread `b mod n`, and taken back in order; chunks are sealed on one thread per core and written in order by
//! one more (see sealed_stream). No copy of the store and no whole-file buffer is
//! made: the extra memory is the handles and a few 1 MiB chunks. The file is `<path>.tmp` created with mode 0600,
//! fsynced, renamed over `<path>`, and the directory fsynced: a crash leaves the old or the new file, never a torn
//! one. Entries added while the maps are listed may or may not be in the file (as in version 2); an access token
//! or family whose grant is not in the file is dropped at load.
//!
//! Loading: one thread reads chunks, one per core opens them; the caller's thread cuts the plaintext into 1 MiB
//! batches of whole records and one thread per core decodes them and inserts into the (sharded) maps. Access
//! tokens and families name their grant, so every batch holding grants is finished before the first of them. A
//! missing file is an empty store; a file that is not a snapshot, has another version, does not authenticate
//! (wrong key, flipped byte, truncation, a dropped, repeated or reordered chunk) or does not decode is an error that
//! names the file and the cause, and nothing of it is used. Expired entries are dropped.
//!
//! Not kept: authorizations waiting for consent or the IdP (a browser flow in progress when the proxy restarts
//! starts again), rate-limit buckets.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::*;
use crate::clock::UnixTime;
use crate::config::SnapshotKey;
use crate::crypto::{Sealer, TokenHash};

use super::records::*;
use super::sealed_stream::{self, OpenFailure, StreamKey};

const MAGIC: &[u8; 8] = b"DCRPSNAP";
/// The version written.
const VERSION: u8 = 3;
/// The previous version, still read.
const VERSION_2: u8 = 2;
/// Plaintext bytes per sealed chunk.
const CHUNK: usize = 1 << 20;
/// Chunk sizes a reader accepts (the header is authenticated only with the first chunk, after the allocation).
const CHUNK_RANGE: std::ops::RangeInclusive<usize> = 1..=(16 << 20);
/// The largest record a reader accepts.
const MAX_RECORD: usize = 16 << 20;
/// Header of a version-3 file: magic, version, chunk size, salt.
const HEADER_V3: usize = 8 + 1 + 4 + 32;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("snapshot {path} is not a dcr-proxy snapshot (bad header or truncated)")]
    NotASnapshot { path: PathBuf },
    #[error(
        "snapshot {path} has format version {version}; this build reads versions {VERSION_2} and {VERSION} (a version-1 \
         snapshot is from a dcr-proxy before refresh-token families; move it away, or set \
         store.start_empty_on_bad_snapshot = true, and users sign in again)"
    )]
    Version { path: PathBuf, version: u8 },
    #[error("snapshot {path} cannot be decrypted: wrong key (DCR_PROXY_SNAPSHOT_KEY / store.snapshot_key_file) or a corrupted file")]
    Decrypt { path: PathBuf },
    #[error("snapshot {path} is corrupted: {reason}")]
    Decode { path: PathBuf, reason: String },
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

/// The section after `SnapshotV2`: memberships by grant id and by code hash.
#[derive(Serialize, Deserialize, Default)]
struct Memberships {
    grants: Vec<(u128, MembershipRec)>,
    codes: Vec<([u8; 32], MembershipRec)>,
}

#[cfg(test)]
fn collect_memberships(store: &MemoryStore) -> Memberships {
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

#[cfg(test)]
fn collect(store: &MemoryStore, now: UnixTime) -> SnapshotV2 {
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

/// Writes the store in the version-2 format, as dcr-proxy did before version 3 (tests of the v2 reader).
#[cfg(test)]
fn write_v2(store: &MemoryStore, now: UnixTime, path: &Path, key: &SnapshotKey) -> Result<usize, SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.to_owned(), source };
    let snapshot = collect(store, now);
    let encode_error = |e: postcard::Error| SnapshotError::Decode { path: path.to_owned(), reason: e.to_string() };
    let mut plain = postcard::to_allocvec(&snapshot).map_err(encode_error)?;
    drop(snapshot);
    plain.extend(postcard::to_allocvec(&collect_memberships(store)).map_err(encode_error)?);
    let mut header = MAGIC.to_vec();
    header.push(VERSION_2);
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
    Ok(header.len() + nonce.len() + sealed.len())
}

/// Writes the store to `path` atomically, in the version-3 format. Blocking: call it from `spawn_blocking`.
pub fn write(store: &MemoryStore, now: UnixTime, path: &Path, key: &SnapshotKey) -> Result<usize, SnapshotError> {
    write_chunked(store, now, path, key, CHUNK)
}

fn write_chunked(
    store: &MemoryStore,
    now: UnixTime,
    path: &Path,
    key: &SnapshotKey,
    chunk_size: usize,
) -> Result<usize, SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.to_owned(), source };
    let mut salt = [0u8; 32];
    crate::crypto::fill_random(&mut salt);
    let chunk = u32::try_from(chunk_size).unwrap_or(u32::MAX);
    let header = [&MAGIC[..], &[VERSION], &chunk.to_be_bytes(), &salt].concat();
    let tmp = path.with_extension("tmp");
    let bytes = {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(io)?;
        let stream_key = StreamKey::derive(&key.0, &salt);
        let ((), bytes) =
            sealed_stream::seal_to(&mut file, &stream_key, &header, chunk_size, |out| encode_v3(store, now, out))
                .map_err(io)?;
        file.sync_all().map_err(io)?;
        bytes
    };
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok(usize::try_from(bytes).unwrap_or(usize::MAX))
}

/// One record of a version-3 file. Strings borrow from the store when written and are owned when read.
#[derive(Serialize, Deserialize)]
enum Record<'a> {
    Meta {
        written_at: UnixTime,
    },
    Client(ClientRec),
    Grant(GrantV3<'a>),
    Access(AccessV3<'a>),
    Family(FamilyV3<'a>),
    Code(CodeV3<'a>),
    Spent {
        hash: [u8; 32],
        grant: u128,
        expires_at: UnixTime,
    },
    /// The last record: how many came before it.
    End {
        records: u64,
    },
    /// A client with public keys (`private_key_jwt`); added after `End` in the enum so that the tags of the
    /// records above stay as version 3 first wrote them.
    ClientWithKeys(ClientRec, ClientKeysRec),
}

#[derive(Serialize, Deserialize)]
struct IdentityV3<'a> {
    sub: Cow<'a, str>,
    name: Option<Cow<'a, str>>,
    email: Option<Cow<'a, str>>,
    preferred_username: Option<Cow<'a, str>>,
    tid: Option<Cow<'a, str>>,
    groups: Vec<Cow<'a, str>>,
    roles: Vec<Cow<'a, str>>,
    groups_overage: bool,
}

#[derive(Serialize, Deserialize)]
struct TokensV3<'a> {
    access_token: Cow<'a, str>,
    refresh_token: Option<Cow<'a, str>>,
    expires_at: UnixTime,
    scope: Option<Cow<'a, str>>,
}

#[derive(Serialize, Deserialize)]
struct GrantV3<'a> {
    id: u128,
    client_id: Cow<'a, str>,
    scope: Cow<'a, str>,
    resource: Option<Cow<'a, str>>,
    identity: IdentityV3<'a>,
    upstream: Option<TokensV3<'a>>,
    created_at: UnixTime,
    expires_at: UnixTime,
    upstream_obtained_at: UnixTime,
    upstream_refreshed_at: UnixTime,
}

#[derive(Serialize, Deserialize)]
struct AccessV3<'a> {
    hash: [u8; 32],
    grant: u128,
    expires_at: UnixTime,
    /// The token's scope when narrower than the grant's.
    scope: Option<Cow<'a, str>>,
}

#[derive(Serialize, Deserialize)]
struct FamilyV3<'a> {
    family_hash: [u8; 32],
    grant: u128,
    generation: u32,
    current: [u8; 32],
    expires_at: UnixTime,
    /// The just-rotated token: hash, time of rotation, sealed successor.
    rotated: Option<([u8; 32], UnixTime, Cow<'a, [u8]>)>,
}

#[derive(Serialize, Deserialize)]
struct CodeV3<'a> {
    hash: [u8; 32],
    client_id: Cow<'a, str>,
    redirect_uri: Cow<'a, str>,
    redirect_uri_explicit: bool,
    code_challenge: Cow<'a, str>,
    scope: Vec<Cow<'a, str>>,
    resource: Option<Cow<'a, str>>,
    expires_at: UnixTime,
    identity: IdentityV3<'a>,
    upstream: Option<TokensV3<'a>>,
}

fn cow(s: &str) -> Cow<'_, str> {
    Cow::Borrowed(s)
}

fn identity_v3(i: &Identity) -> IdentityV3<'_> {
    IdentityV3 {
        sub: cow(&i.sub),
        name: i.name.as_deref().map(cow),
        email: i.email.as_deref().map(cow),
        preferred_username: i.preferred_username.as_deref().map(cow),
        tid: i.tid.as_deref().map(cow),
        groups: i.groups.iter().map(|g| cow(g)).collect(),
        roles: i.roles.iter().map(|r| cow(r)).collect(),
        groups_overage: i.groups_overage,
    }
}

fn tokens_v3(c: &UpstreamCredential) -> Option<TokensV3<'_>> {
    match c {
        UpstreamCredential::Tokens(t) => Some(TokensV3 {
            access_token: cow(t.access_token()),
            refresh_token: t.refresh_token().map(cow),
            expires_at: t.expires_at,
            scope: t.scope.as_deref().map(cow),
        }),
        UpstreamCredential::Local => None,
    }
}

fn login_from_v3(identity: IdentityV3<'_>, upstream: Option<TokensV3<'_>>) -> Option<UpstreamLogin> {
    let credential = match upstream {
        Some(t) => UpstreamCredential::Tokens(
            UpstreamTokens::new(
                t.access_token,
                t.refresh_token.map(Cow::into_owned),
                t.expires_at,
                t.scope.map(Cow::into_owned),
            )
            .ok()?,
        ),
        None => UpstreamCredential::Local,
    };
    let owned = |v: Vec<Cow<'_, str>>| v.into_iter().map(Cow::into_owned).collect();
    let identity = Identity {
        sub: identity.sub.into_owned(),
        name: identity.name.map(Cow::into_owned),
        email: identity.email.map(Cow::into_owned),
        preferred_username: identity.preferred_username.map(Cow::into_owned),
        tid: identity.tid.map(Cow::into_owned),
        groups: owned(identity.groups),
        roles: owned(identity.roles),
        groups_overage: identity.groups_overage,
    };
    Some(UpstreamLogin { credential, identity })
}

/// Encodes records into a reused buffer and writes them, length first, to the sealed stream.
struct RecordWriter<'w> {
    out: &'w mut sealed_stream::SealingWriter,
    scratch: Vec<u8>,
    records: u64,
}

impl RecordWriter<'_> {
    /// Encodes `record` (the caller may hold a lock meanwhile: nothing blocks here).
    fn encode(&mut self, record: &Record<'_>) -> std::io::Result<()> {
        self.scratch.clear();
        self.scratch = postcard::to_extend(record, std::mem::take(&mut self.scratch))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        Ok(())
    }

    /// Writes the encoded record (this may wait for the sealing thread: hold no lock).
    fn emit(&mut self) -> std::io::Result<()> {
        let len = u32::try_from(self.scratch.len()).map_err(|_| std::io::Error::other("record too large"))?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&self.scratch)?;
        self.records += 1;
        Ok(())
    }

    fn put(&mut self, record: &Record<'_>) -> std::io::Result<()> {
        self.encode(record)?;
        self.emit()
    }
}

/// Grants per batch encoded by one thread (about 1 MiB with Entra-sized tokens).
const GRANTS_PER_BATCH: usize = 256;

/// Appends `record`, length first, to `buf` (the caller may hold a lock meanwhile: nothing blocks here).
fn append_record(buf: &mut Vec<u8>, record: &Record<'_>) -> std::io::Result<()> {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    *buf = postcard::to_extend(record, std::mem::take(buf))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let len = u32::try_from(buf.len() - at - 4).map_err(|_| std::io::Error::other("record too large"))?;
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// The grant's record, its credential read-locked only while it is encoded.
fn append_grant(buf: &mut Vec<u8>, g: &Grant) -> std::io::Result<()> {
    let upstream = g.upstream();
    append_record(
        buf,
        &Record::Grant(GrantV3 {
            id: g.id.0,
            client_id: cow(&g.client_id),
            scope: cow(&g.scope),
            resource: g.resource.as_deref().map(cow),
            identity: identity_v3(&g.identity),
            upstream: tokens_v3(&upstream),
            created_at: g.created_at,
            expires_at: g.expires_at(),
            upstream_obtained_at: g.upstream_obtained_at.load(std::sync::atomic::Ordering::Relaxed),
            upstream_refreshed_at: g.upstream_refreshed_at.load(std::sync::atomic::Ordering::Relaxed),
        }),
    )
}

/// Encodes the grants on [`sealed_stream::workers`] threads, batch `b` on thread `b mod threads`, and writes the
/// batches in order (the grant records are most of a snapshot's bytes; encoding them is mostly copying tokens).
fn encode_grants(grants: &[Arc<Grant>], w: &mut RecordWriter<'_>) -> std::io::Result<()> {
    type Batch = std::io::Result<(Vec<u8>, u64)>;
    let threads = sealed_stream::workers();
    let batches: Vec<&[Arc<Grant>]> = grants.chunks(GRANTS_PER_BATCH).collect();
    std::thread::scope(|scope| {
        let mut lanes = Vec::with_capacity(threads);
        for lane in 0..threads {
            let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<Batch>(2);
            let (spare_tx, spare_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(2);
            let mine: Vec<&[Arc<Grant>]> = batches.iter().skip(lane).step_by(threads).copied().collect();
            scope.spawn(move || {
                for batch in mine {
                    let mut buf = spare_rx.try_recv().unwrap_or_default();
                    buf.clear();
                    let encoded = batch.iter().try_for_each(|g| append_grant(&mut buf, g));
                    // The receiver is gone when the writing stopped: stop too.
                    if done_tx.send(encoded.map(|()| (buf, batch.len() as u64))).is_err() {
                        return;
                    }
                }
            });
            lanes.push((done_rx, spare_tx));
        }
        for b in 0..batches.len() {
            let (done, spare) = &lanes[b % threads];
            let (buf, records) = done.recv().map_err(|_| std::io::Error::other("an encoding thread stopped"))??;
            w.out.write_all(&buf)?;
            w.records += records;
            let _ = spare.try_send(buf);
        }
        Ok(())
        // Returning drops the receivers, which ends the encoding threads if the writing stopped early.
    })
}

/// Streams the store's records, map by map (see the module doc for what is locked when).
fn encode_v3(store: &MemoryStore, now: UnixTime, out: &mut sealed_stream::SealingWriter) -> std::io::Result<()> {
    let mut w = RecordWriter { out, scratch: Vec::with_capacity(8192), records: 0 };
    w.put(&Record::Meta { written_at: now })?;
    let clients: Vec<Arc<Client>> = store.clients.iter().map(|c| c.clone()).collect();
    for c in clients {
        match client_keys_rec(&c) {
            Some(keys) => w.put(&Record::ClientWithKeys(client_rec(&c), keys))?,
            None => w.put(&Record::Client(client_rec(&c)))?,
        }
    }
    let grants: Vec<Arc<Grant>> = store.grants.iter().filter(|g| !g.is_revoked()).map(|g| g.clone()).collect();
    encode_grants(&grants, &mut w)?;
    let access: Vec<(TokenHash, u128, UnixTime, Option<Arc<str>>)> = store
        .access_tokens
        .iter()
        .filter(|t| t.expires_at > now && !t.grant.is_revoked())
        .map(|t| (*t.key(), t.grant.id.0, t.expires_at, (*t.scope != *t.grant.scope).then(|| t.scope.clone())))
        .collect();
    for (hash, grant, expires_at, scope) in access {
        w.put(&Record::Access(AccessV3 { hash: hash.0, grant, expires_at, scope: scope.as_deref().map(cow) }))?;
    }
    let families: Vec<TokenHash> = store
        .refresh_families
        .iter()
        .filter(|f| f.expires_at > now && !f.grant.is_revoked())
        .map(|f| *f.key())
        .collect();
    for hash in families {
        let Some(f) = store.refresh_families.get(&hash) else {
            continue;
        };
        w.encode(&Record::Family(FamilyV3 {
            family_hash: hash.0,
            grant: f.grant.id.0,
            generation: f.generation,
            current: f.current.0,
            expires_at: f.expires_at,
            rotated: f.rotated.as_ref().map(|r| (r.hash.0, r.at, Cow::Borrowed(&r.sealed_successor[..]))),
        }))?;
        drop(f);
        w.emit()?;
    }
    let codes: Vec<TokenHash> = store.codes.iter().filter(|c| c.expires_at > now).map(|c| *c.key()).collect();
    for hash in codes {
        let Some(c) = store.codes.get(&hash) else {
            continue;
        };
        w.encode(&Record::Code(CodeV3 {
            hash: hash.0,
            client_id: cow(&c.request.client_id),
            redirect_uri: cow(&c.request.redirect_uri),
            redirect_uri_explicit: c.request.redirect_uri_explicit,
            code_challenge: cow(&c.request.code_challenge),
            scope: c.request.scope.iter().map(|s| cow(s)).collect(),
            resource: c.request.resource.as_deref().map(cow),
            expires_at: c.expires_at,
            identity: identity_v3(&c.login.identity),
            upstream: tokens_v3(&c.login.credential),
        }))?;
        drop(c);
        w.emit()?;
    }
    let spent: Vec<(TokenHash, SpentCode)> =
        store.spent_codes.iter().filter(|c| c.expires_at > now).map(|c| (*c.key(), *c.value())).collect();
    for (hash, s) in spent {
        w.put(&Record::Spent { hash: hash.0, grant: s.grant.0, expires_at: s.expires_at })?;
    }
    let records = w.records;
    w.put(&Record::End { records })
}

/// Bytes of whole records handed to one decoding thread at a time.
const DECODE_BATCH: usize = 1 << 20;

/// The first byte of a record: its variant (postcard encodes the variant index as a varint, one byte here).
const TAG_GRANT: u8 = 2;
const TAG_ACCESS: u8 = 3;
const TAG_FAMILY: u8 = 4;
const TAG_END: u8 = 7;

/// Reads the records of a version-3 stream into a new store, dropping what expired. `Err`: why it does not
/// decode.
///
/// The caller's thread only cuts the plaintext into batches of whole records (checking lengths and the count at
/// the end); [`sealed_stream::workers`] threads decode the batches and insert into the (sharded) maps in
/// parallel. Access tokens and families name their grant: before the first of them after a grant, every batch
/// in flight is finished, so their grant is in the map.
fn decode_v3(input: &mut sealed_stream::OpeningReader, now: UnixTime) -> Result<MemoryStore, String> {
    let store = MemoryStore::new();
    let threads = sealed_stream::workers();
    let (batch_tx, batch_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(threads);
    let batch_rx = std::sync::Mutex::new(batch_rx);
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Result<Vec<u8>, String>>();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (batches, done, store) = (&batch_rx, done_tx.clone(), &store);
            scope.spawn(move || {
                while let Some(batch) = batches.lock().ok().and_then(|b| b.recv().ok()) {
                    if done.send(restore_batch(store, &batch, now).map(|()| batch)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        // Returning drops `batch_tx`, which ends the decoding threads.
        split_records(input, batch_tx, &done_rx)
    })?;
    Ok(store)
}

/// Batches handed to the decoding threads, and their buffers coming back.
struct BatchQueue<'a> {
    batches: std::sync::mpsc::SyncSender<Vec<u8>>,
    done: &'a std::sync::mpsc::Receiver<Result<Vec<u8>, String>>,
    in_flight: usize,
    spare: Vec<Vec<u8>>,
}

impl BatchQueue<'_> {
    fn stopped() -> String {
        "a decoding thread stopped".to_owned()
    }

    /// Takes one batch back: an error when its decoding failed.
    fn take_back(&mut self) -> Result<(), String> {
        let buf = self.done.recv().map_err(|_| Self::stopped())??;
        self.in_flight -= 1;
        self.spare.push(buf);
        Ok(())
    }

    /// Hands `batch` out (a few in flight, no more) and returns an empty buffer for the next one.
    fn send(&mut self, batch: Vec<u8>) -> Result<Vec<u8>, String> {
        if batch.is_empty() {
            return Ok(batch);
        }
        self.batches.send(batch).map_err(|_| Self::stopped())?;
        self.in_flight += 1;
        while self.in_flight > 2 * sealed_stream::workers() {
            self.take_back()?;
        }
        let mut next = self.spare.pop().unwrap_or_else(|| Vec::with_capacity(DECODE_BATCH + 8192));
        next.clear();
        Ok(next)
    }

    /// Waits until every batch handed out is decoded.
    fn settle(&mut self) -> Result<(), String> {
        while self.in_flight > 0 {
            self.take_back()?;
        }
        Ok(())
    }
}

/// Cuts the plaintext into batches of whole records for the decoding threads; see [`decode_v3`].
fn split_records(
    input: &mut sealed_stream::OpeningReader,
    batches: std::sync::mpsc::SyncSender<Vec<u8>>,
    done: &std::sync::mpsc::Receiver<Result<Vec<u8>, String>>,
) -> Result<(), String> {
    let eof = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "the records end before their last one".to_owned(),
        _ => e.to_string(),
    };
    let mut queue = BatchQueue { batches, done, in_flight: 0, spare: Vec::new() };
    let mut batch: Vec<u8> = Vec::with_capacity(DECODE_BATCH + 8192);
    let mut records = 0u64;
    let mut grants_in_flight = false;
    loop {
        let mut len = [0u8; 4];
        input.read_exact(&mut len).map_err(eof)?;
        let size = u32::from_le_bytes(len) as usize;
        if size > MAX_RECORD {
            return Err(format!("a record of {size} bytes"));
        }
        let mut tag = [0u8; 1];
        if size > 0 {
            input.read_exact(&mut tag).map_err(eof)?;
        }
        match (size > 0).then_some(tag[0]) {
            Some(TAG_END) => {
                let mut record = vec![0u8; size];
                record[0] = TAG_END;
                input.read_exact(&mut record[1..]).map_err(eof)?;
                queue.send(batch)?;
                queue.settle()?;
                let Record::End { records: counted } = postcard::from_bytes(&record).map_err(|e| e.to_string())? else {
                    return Err("the last record is not the end".to_owned());
                };
                if counted != records {
                    return Err(format!("{records} records where the file counts {counted}"));
                }
                let mut rest = [0u8; 1];
                if input.read(&mut rest).map_err(|e| e.to_string())? != 0 {
                    return Err("data after the last record".to_owned());
                }
                return Ok(());
            }
            Some(TAG_ACCESS | TAG_FAMILY) if grants_in_flight => {
                // Their grants first: hand out what came before this record, and wait for all of it.
                batch = queue.send(batch)?;
                queue.settle()?;
                grants_in_flight = false;
            }
            Some(TAG_GRANT) => grants_in_flight = true,
            _ => {}
        }
        let start = batch.len();
        batch.extend_from_slice(&len);
        if size > 0 {
            batch.push(tag[0]);
            batch.resize(start + 4 + size, 0);
            input.read_exact(&mut batch[start + 5..]).map_err(eof)?;
        }
        records += 1;
        if batch.len() >= DECODE_BATCH {
            batch = queue.send(batch)?;
        }
    }
}

/// Decodes a batch of whole records (each length first) and puts them into `store`.
fn restore_batch(store: &MemoryStore, mut batch: &[u8], now: UnixTime) -> Result<(), String> {
    while let Some((len, rest)) = batch.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        let (record, rest) = rest.split_at_checked(len).ok_or("a record cut short")?;
        restore_record(store, postcard::from_bytes(record).map_err(|e| e.to_string())?, now)?;
        batch = rest;
    }
    Ok(())
}

/// Puts one record into `store`, unless it expired (or names a grant that is not there).
fn restore_record(store: &MemoryStore, record: Record<'_>, now: UnixTime) -> Result<(), String> {
    match record {
        Record::Meta { .. } => {}
        Record::Client(c) => {
            if let Some(client) = client_from(c, None) {
                store.clients.insert(client.client_id.clone(), Arc::new(client));
            }
        }
        Record::ClientWithKeys(c, keys) => {
            if let Some(client) = client_from(c, Some(keys)) {
                store.clients.insert(client.client_id.clone(), Arc::new(client));
            }
        }
        Record::Grant(g) => {
            if g.expires_at <= now {
                return Ok(());
            }
            let Some(login) = login_from_v3(g.identity, g.upstream) else {
                return Ok(());
            };
            let grant = Grant::restore(
                GrantId(g.id),
                g.client_id.into_owned(),
                g.scope.into_owned(),
                g.resource.map(Cow::into_owned),
                login,
                g.created_at,
                g.expires_at,
            );
            grant.upstream_obtained_at.store(g.upstream_obtained_at, std::sync::atomic::Ordering::Relaxed);
            grant.upstream_refreshed_at.store(g.upstream_refreshed_at, std::sync::atomic::Ordering::Relaxed);
            store.grants.insert(grant.id, grant);
        }
        Record::Access(a) => {
            let grant = store.grants.get(&GrantId(a.grant)).map(|g| g.clone());
            if let Some(grant) = grant.filter(|_| a.expires_at > now) {
                let scope = a.scope.map_or_else(|| grant.scope.clone(), |s| Arc::from(s.as_ref()));
                store.access_tokens.insert(TokenHash(a.hash), AccessToken { grant, expires_at: a.expires_at, scope });
            }
        }
        Record::Family(f) => {
            let grant = store.grants.get(&GrantId(f.grant)).map(|g| g.clone());
            if let Some(grant) = grant.filter(|_| f.expires_at > now) {
                let rotated = f.rotated.map(|(hash, at, sealed)| {
                    Box::new(Rotation { hash: TokenHash(hash), at, sealed_successor: sealed.into_owned() })
                });
                let family = RefreshFamily {
                    grant,
                    generation: f.generation,
                    current: TokenHash(f.current),
                    expires_at: f.expires_at,
                    rotated,
                };
                store.refresh_families.insert(TokenHash(f.family_hash), family);
            }
        }
        Record::Code(c) => {
            if c.expires_at <= now {
                return Ok(());
            }
            let Some(login) = login_from_v3(c.identity, c.upstream) else {
                return Ok(());
            };
            let request = AuthorizationRequest {
                client_id: c.client_id.into_owned(),
                redirect_uri: c.redirect_uri.into_owned(),
                redirect_uri_explicit: c.redirect_uri_explicit,
                state: None,
                code_challenge: c.code_challenge.into_owned(),
                scope: c.scope.into_iter().map(Cow::into_owned).collect(),
                resource: c.resource.map(Cow::into_owned),
            };
            store.codes.insert(TokenHash(c.hash), AuthorizationCode { request, expires_at: c.expires_at, login });
        }
        Record::Spent { hash, grant, expires_at } => {
            if expires_at > now {
                store.spent_codes.insert(TokenHash(hash), SpentCode { grant: GrantId(grant), expires_at });
            }
        }
        Record::End { .. } => return Err("a record after the last one".to_owned()),
    }
    Ok(())
}

/// Reads a snapshot with the current key or, during a key rotation, the previous one.
pub fn load_rotating(
    path: &Path,
    key: &SnapshotKey,
    previous: Option<&SnapshotKey>,
    now: UnixTime,
) -> Result<MemoryStore, SnapshotError> {
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
pub fn load(path: &Path, key: &SnapshotKey, now: UnixTime) -> Result<MemoryStore, SnapshotError> {
    let io = |source| SnapshotError::Io { path: path.to_owned(), source };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(MemoryStore::new()),
        Err(source) => return Err(io(source)),
    };
    let mut header = [0u8; HEADER_V3];
    let got = read_up_to(&mut file, &mut header).map_err(io)?;
    if got < MAGIC.len() + 1 || &header[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotASnapshot { path: path.to_owned() });
    }
    match header[MAGIC.len()] {
        VERSION if got == HEADER_V3 => load_v3(path, file, &header, key, now),
        VERSION => Err(SnapshotError::NotASnapshot { path: path.to_owned() }),
        VERSION_2 => {
            let mut data = header[..got].to_vec();
            file.read_to_end(&mut data).map_err(io)?;
            load_v2(path, data, key, now)
        }
        version => Err(SnapshotError::Version { path: path.to_owned(), version }),
    }
}

/// Fills `buf` from `input` up to its end: the number of bytes read.
fn read_up_to(input: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn load_v3(
    path: &Path,
    file: std::fs::File,
    header: &[u8; HEADER_V3],
    key: &SnapshotKey,
    now: UnixTime,
) -> Result<MemoryStore, SnapshotError> {
    let chunk = u32::from_be_bytes([header[9], header[10], header[11], header[12]]) as usize;
    if !CHUNK_RANGE.contains(&chunk) {
        return Err(SnapshotError::Decode { path: path.to_owned(), reason: format!("chunk size {chunk}") });
    }
    let mut salt = [0u8; 32];
    salt.copy_from_slice(&header[13..]);
    let stream_key = StreamKey::derive(&key.0, &salt);
    sealed_stream::open_from(file, &stream_key, header, chunk, |input| decode_v3(input, now)).map_err(|e| match e {
        OpenFailure::Io(source) => SnapshotError::Io { path: path.to_owned(), source },
        OpenFailure::Chunk(_) => SnapshotError::Decrypt { path: path.to_owned() },
        OpenFailure::Consumer(reason) => SnapshotError::Decode { path: path.to_owned(), reason },
    })
}

fn load_v2(path: &Path, mut data: Vec<u8>, key: &SnapshotKey, now: UnixTime) -> Result<MemoryStore, SnapshotError> {
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

fn rebuild(s: SnapshotV2, memberships: Memberships, now: UnixTime) -> MemoryStore {
    let mut grant_members: HashMap<u128, MembershipRec> = memberships.grants.into_iter().collect();
    let mut code_members: HashMap<[u8; 32], MembershipRec> = memberships.codes.into_iter().collect();
    let store = MemoryStore::new();
    for client in s.clients.into_iter().filter_map(|c| client_from(c, None)) {
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

    fn sample_store() -> (MemoryStore, String) {
        let store = MemoryStore::new();
        let tokens = UpstreamTokens::new("upstream-access-token-value", Some("upstream-refresh".into()), 5000, None);
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
        let store = MemoryStore::new();
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
        header.push(VERSION_2);
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

    fn temp_path() -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("dcrp-snap-{}", crate::crypto::random_token()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("state.snapshot");
        (dir, path)
    }

    /// The header and the sealed chunks of a version-3 file.
    fn split_chunks(file: &[u8], chunk: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
        let chunks = file[HEADER_V3..].chunks(chunk + sealed_stream::TAG_LEN).map(<[u8]>::to_vec).collect();
        (file[..HEADER_V3].to_vec(), chunks)
    }

    /// `load` refuses `bytes` as not authentic, naming the file.
    fn refused_naming_the_file(path: &Path, bytes: &[u8], what: &str) {
        let _ = std::fs::write(path, bytes);
        match load(path, &SnapshotKey([3u8; 32]), 200) {
            Err(e @ SnapshotError::Decrypt { .. }) => {
                assert!(e.to_string().contains(&path.display().to_string()), "{what}: {e}");
            }
            Err(e) => panic!("{what}: {e}"),
            Ok(_) => panic!("{what}: loaded"),
        }
    }

    fn many_grants(n: usize) -> (MemoryStore, Vec<String>) {
        let store = MemoryStore::new();
        let mut tokens = Vec::new();
        for i in 0..n {
            let upstream = UpstreamTokens::new(format!("upstream-{i}"), Some(format!("refresh-{i}")), 5000, None);
            let login = UpstreamLogin {
                credential: UpstreamCredential::Tokens(upstream.unwrap_or_else(|_| unreachable!())),
                identity: Identity { sub: format!("user-{i}"), groups: vec![format!("g{i}")], ..Identity::default() },
            };
            let grant = Grant::new("c1".into(), vec!["openid".into()], None, login, 100);
            grant.extend_to(9000);
            let access = crate::crypto::random_token();
            store.access_tokens.insert(TokenHash::of(&access), AccessToken::new(grant.clone(), 4000));
            store.grants.insert(grant.id, grant);
            tokens.push(access);
        }
        (store, tokens)
    }

    #[test]
    fn chunks_truncated_dropped_reordered_repeated_or_flipped_are_refused_naming_the_file() {
        let (dir, path) = temp_path();
        let key = SnapshotKey([3u8; 32]);
        let chunk = 256;
        let (store, tokens) = many_grants(20);
        assert!(write_chunked(&store, 200, &path, &key, chunk).is_ok());
        let good = std::fs::read(&path).unwrap_or_default();
        let loaded = load(&path, &key, 200).unwrap_or_default();
        assert_eq!(loaded.stats().grants, 20);
        assert!(tokens.iter().all(|t| loaded.access_token(&TokenHash::of(t), 200).is_some()));
        let (header, c) = split_chunks(&good, chunk);
        assert!(c.len() > 6, "{} chunks", c.len());
        let n = c.len();
        let with = |chunks: Vec<Vec<u8>>| [header.clone(), chunks.concat()].concat();

        refused_naming_the_file(&path, &with(c[..n - 1].to_vec()), "truncated at a chunk boundary");
        refused_naming_the_file(&path, &with(c[..3].to_vec()), "truncated at an early chunk boundary");
        refused_naming_the_file(&path, &good[..good.len() - 7], "truncated inside the last chunk");
        refused_naming_the_file(&path, &good[..HEADER_V3 + chunk + 3], "truncated inside a chunk");
        refused_naming_the_file(&path, &good[..HEADER_V3], "no chunk");
        let mut dropped = c.clone();
        dropped.remove(2);
        refused_naming_the_file(&path, &with(dropped), "a chunk dropped");
        let mut reordered = c.clone();
        reordered.swap(1, 2);
        refused_naming_the_file(&path, &with(reordered), "two chunks swapped");
        let mut repeated = c.clone();
        repeated.insert(3, c[3].clone());
        refused_naming_the_file(&path, &with(repeated), "a chunk repeated");
        refused_naming_the_file(&path, &[good.clone(), c[n - 1].clone()].concat(), "the last chunk repeated");
        for at in [HEADER_V3 - 1, HEADER_V3, HEADER_V3 + chunk + 20, good.len() / 2, good.len() - 1] {
            let mut flipped = good.clone();
            flipped[at] ^= 0x01;
            refused_naming_the_file(&path, &flipped, &format!("byte {at} flipped"));
        }
        let _ = std::fs::write(&path, &good);
        assert!(matches!(load(&path, &SnapshotKey([4u8; 32]), 200), Err(SnapshotError::Decrypt { .. })), "wrong key");
        // Another snapshot's chunk, same key: refused (each file has its own key).
        let other = dir.join("other.snapshot");
        assert!(write_chunked(&store, 200, &other, &key, chunk).is_ok());
        let (_, o) = split_chunks(&std::fs::read(&other).unwrap_or_default(), chunk);
        let mut mixed = c.clone();
        mixed[1] = o[1].clone();
        refused_naming_the_file(&path, &with(mixed), "a chunk of another file");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_empty_store_and_a_store_of_exactly_one_chunk_round_trip_and_refuse_truncation() {
        let (dir, path) = temp_path();
        let key = SnapshotKey([3u8; 32]);
        assert!(write(&MemoryStore::new(), 200, &path, &key).is_ok());
        let empty = std::fs::read(&path).unwrap_or_default();
        assert_eq!(&empty[..9], b"DCRPSNAP\x03");
        assert!(load(&path, &key, 200).is_ok_and(|s| s.stats() == StoreStats::default()));
        refused_naming_the_file(&path, &empty[..empty.len() - 1], "empty store truncated");
        refused_naming_the_file(&path, &empty[..HEADER_V3], "empty store without its chunk");

        // A chunk size equal to the plaintext: one full chunk, then the empty last one.
        let (store, tokens) = many_grants(3);
        assert!(write_chunked(&store, 200, &path, &key, CHUNK).is_ok());
        let plain = std::fs::read(&path).map(|f| f.len() - HEADER_V3 - sealed_stream::TAG_LEN).unwrap_or(0);
        assert!(write_chunked(&store, 200, &path, &key, plain).is_ok());
        let one = std::fs::read(&path).unwrap_or_default();
        assert_eq!(one.len(), HEADER_V3 + plain + 2 * sealed_stream::TAG_LEN);
        let loaded = load(&path, &key, 200).unwrap_or_default();
        assert!(tokens.iter().all(|t| loaded.access_token(&TokenHash::of(t), 200).is_some()));
        refused_naming_the_file(&path, &one[..HEADER_V3 + plain + sealed_stream::TAG_LEN], "the empty last chunk cut");
        // The same plaintext in a single, last chunk.
        assert!(write_chunked(&store, 200, &path, &key, plain + 1).is_ok());
        assert_eq!(std::fs::read(&path).map(|f| f.len()).unwrap_or(0), HEADER_V3 + plain + sealed_stream::TAG_LEN);
        assert!(load(&path, &key, 200).is_ok_and(|s| s.stats().grants == 3));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_version_2_file_still_loads_and_the_next_write_is_version_3() {
        let (dir, path) = temp_path();
        let key = SnapshotKey([3u8; 32]);
        let (store, tokens) = many_grants(5);
        assert!(write_v2(&store, 200, &path, &key).is_ok());
        assert_eq!(std::fs::read(&path).map(|f| f[8]).ok(), Some(2));
        let loaded = load(&path, &key, 200).unwrap_or_default();
        assert!(tokens.iter().all(|t| loaded.access_token(&TokenHash::of(t), 200).is_some()));
        let groups = loaded.grants.iter().map(|g| g.identity.groups.len()).sum::<usize>();
        assert_eq!(groups, 5, "memberships of the v2 file");
        assert!(write(&loaded, 200, &path, &key).is_ok());
        assert_eq!(std::fs::read(&path).map(|f| f[8]).ok(), Some(3));
        let again = load(&path, &key, 200).unwrap_or_default();
        assert!(tokens.iter().all(|t| again.access_token(&TokenHash::of(t), 200).is_some()));
        assert_eq!(again.grants.iter().map(|g| g.identity.groups.len()).sum::<usize>(), 5);
        // v2 files are still checked: a flipped byte is refused.
        assert!(write_v2(&store, 200, &path, &key).is_ok());
        let mut v2 = std::fs::read(&path).unwrap_or_default();
        let mid = v2.len() / 2;
        v2[mid] ^= 1;
        refused_naming_the_file(&path, &v2, "v2 flipped");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn codes_spent_codes_families_and_clients_round_trip_in_version_3() {
        let (dir, path) = temp_path();
        let key = SnapshotKey([3u8; 32]);
        let (store, _) = many_grants(2);
        store.put_client(Client::public("c1", vec!["http://127.0.0.1/cb".into()], 100));
        let login = UpstreamLogin {
            credential: UpstreamCredential::Local,
            identity: Identity { sub: "carol".into(), roles: vec!["Admin".into()], ..Identity::default() },
        };
        let request = AuthorizationRequest {
            client_id: "c1".into(),
            redirect_uri: "http://127.0.0.1/cb".into(),
            redirect_uri_explicit: true,
            state: None,
            code_challenge: "challenge".into(),
            scope: vec!["openid".into()],
            resource: Some("https://mcp.example/".into()),
        };
        store.issue_code(TokenHash::of("code"), AuthorizationCode { request: request.clone(), expires_at: 700, login });
        store.spent_codes.insert(TokenHash::of("spent"), SpentCode { grant: GrantId(7), expires_at: 700 });
        assert!(write(&store, 200, &path, &key).is_ok());
        let loaded = load(&path, &key, 200).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(loaded.has_client("c1"));
        let code =
            loaded.codes.get(&TokenHash::of("code")).map(|c| (c.request.clone(), c.login.identity.roles.clone()));
        assert_eq!(code, Some((request, vec!["Admin".to_owned()])));
        assert!(matches!(loaded.redeem_code(&TokenHash::of("spent")), CodeRedemption::Spent(GrantId(7))));
        assert_eq!(loaded.stats(), StoreStats { clients: 1, codes: 1, grants: 2, access_tokens: 2, ..loaded.stats() });
    }

    /// A `private_key_jwt` client (keys inline, or a URL, with its signing algorithm).
    fn keyed_client(id: &str, keys: ClientKeys) -> Client {
        let mut c = Client::public(id, vec!["https://app.example/cb".into()], 100);
        c.auth_method = ClientAuthMethod::PrivateKeyJwt;
        c.keys = Some(keys);
        c.signing_alg = Some(jsonwebtoken::Algorithm::ES256);
        c
    }

    fn inline_keys() -> ClientKeys {
        let jwk = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]});
        ClientKeys::Inline(Arc::new(crate::jwk::KeySet::parse_registered(&jwk).unwrap_or_else(|e| panic!("{e}"))))
    }

    #[test]
    fn private_key_jwt_clients_keep_their_keys_in_snapshots_and_redis_values() {
        let (dir, path) = temp_path();
        let key = SnapshotKey([4u8; 32]);
        let store = MemoryStore::new();
        store.put_client(keyed_client("inline", inline_keys()));
        store.put_client(keyed_client("uri", ClientKeys::Uri("https://app.example/jwks.json".into())));
        store.put_client(Client::public("plain", vec!["https://app.example/cb".into()], 100));
        assert!(write(&store, 200, &path, &key).is_ok());
        let loaded = load(&path, &key, 200).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        for id in ["inline", "uri"] {
            let c = loaded.client(id).unwrap_or_else(|| panic!("{id} lost"));
            let original = store.client(id).unwrap_or_else(|| panic!("{id}"));
            assert_eq!(
                (c.auth_method, &c.keys, c.signing_alg),
                (original.auth_method, &original.keys, original.signing_alg)
            );
        }
        assert_eq!(loaded.client("plain").map(|c| c.keys.clone()), Some(None));
        // Redis values: with keys they round trip; a value written before keys existed (the record alone)
        // still reads, as a client without keys.
        for c in [keyed_client("inline", inline_keys()), Client::public("plain", vec![], 1)] {
            let bytes = encode_client(&c).unwrap_or_default();
            let back = decode_client(&bytes).unwrap_or_else(|| panic!("{}", c.client_id));
            assert_eq!((back.client_id, back.keys), (c.client_id.clone(), c.keys.clone()));
        }
        let old = postcard::to_allocvec(&client_rec(&Client::public("old", vec![], 1))).unwrap_or_default();
        assert_eq!(decode_client(&old).map(|c| c.client_id), Some("old".to_owned()));
        // A private_key_jwt client whose keys are missing does not read (it could never authenticate).
        let mut keyless = keyed_client("keyless", inline_keys());
        keyless.keys = None;
        keyless.signing_alg = None;
        assert!(decode_client(&encode_client(&keyless).unwrap_or_default()).is_none());
    }

    /// The key of tests/stores/durability.rs (`KEY`), which reads the fixture below.
    const FIXTURE_KEY: [u8; 32] = [
        0xab, 0xcd, 0xef, 0x12, 0x34, 0x56, 0x78, 0x90, 0xab, 0xcd, 0xef, 0x12, 0x34, 0x56, 0x78, 0x90, 0xab, 0xcd,
        0xef, 0x12, 0x34, 0x56, 0x78, 0x90, 0xab, 0xcd, 0xef, 0x12, 0x34, 0x56, 0x78, 0x90,
    ];
    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/snapshot-v2.bin");
    const FIXTURE_REFRESH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/snapshot-v2.refresh-token");
    /// The proxy access token (its hash is in the fixture) and the IdP token of its grant.
    const FIXTURE_ACCESS: &str = "v2-fixture-proxy-access-token";
    const FIXTURE_UPSTREAM: &str = "v2-fixture-upstream-access-token";
    const YEAR_2100: UnixTime = 4_102_444_800;

    /// Writes tests/fixtures/snapshot-v2.bin with the version-2 writer (today's before issue 13):
    /// `cargo test --lib write_the_version_2_fixture -- --ignored`.
    #[test]
    #[ignore = "writes the committed fixture"]
    fn write_the_version_2_fixture() {
        let store = MemoryStore::new();
        // A client that redeemed a code (never swept as unused).
        let client = Client::public("v2-fixture-client", vec!["http://127.0.0.1:33418/callback".into()], 1_700_000_000);
        client.mark_authorized(1_700_000_000);
        store.put_client(client);
        let tokens = UpstreamTokens::new(
            FIXTURE_UPSTREAM,
            Some("v2-fixture-upstream-refresh-token".into()),
            YEAR_2100,
            Some("User.Read".into()),
        );
        let login = UpstreamLogin {
            credential: UpstreamCredential::Tokens(tokens.unwrap_or_else(|_| unreachable!())),
            identity: Identity { sub: "v2-fixture-user".into(), ..Identity::default() },
        };
        let grant = Grant::new("v2-fixture-client".into(), vec!["openid".into()], None, login, 1_700_000_000);
        grant.extend_to(YEAR_2100);
        store.access_tokens.insert(TokenHash::of(FIXTURE_ACCESS), AccessToken::new(grant.clone(), YEAR_2100));
        let name = RefreshTokenName { family: FamilyId::random(), generation: 1 };
        let refresh = name.mint();
        store.refresh_families.insert(
            name.family.hash(),
            RefreshFamily {
                grant: grant.clone(),
                generation: 1,
                current: TokenHash::of(&refresh),
                expires_at: YEAR_2100,
                rotated: None,
            },
        );
        store.grants.insert(grant.id, grant);
        assert!(write_v2(&store, 1_700_000_000, Path::new(FIXTURE), &SnapshotKey(FIXTURE_KEY)).is_ok());
        assert!(std::fs::write(FIXTURE_REFRESH, refresh).is_ok());
    }

    #[test]
    fn the_committed_version_2_fixture_loads() {
        let loaded = load(Path::new(FIXTURE), &SnapshotKey(FIXTURE_KEY), 1_800_000_000).map_err(|e| e.to_string());
        assert_eq!(std::fs::read(FIXTURE).map(|f| f[8]).ok(), Some(2));
        let loaded = loaded.unwrap_or_else(|e| panic!("{e}"));
        let grant = loaded.access_token(&TokenHash::of(FIXTURE_ACCESS), 1_800_000_000);
        let upstream = grant.map(|g| match &*g.upstream() {
            UpstreamCredential::Tokens(t) => t.access_token().to_owned(),
            UpstreamCredential::Local => String::new(),
        });
        assert_eq!(upstream.as_deref(), Some(FIXTURE_UPSTREAM));
        let refresh = std::fs::read_to_string(FIXTURE_REFRESH).unwrap_or_default();
        assert_eq!(
            loaded.refresh_token(refresh.trim()).map(|(_, exp, current)| (exp, current)),
            Some((YEAR_2100, true))
        );
    }

    /// Issue 13, parallel load: grants over many encoding and decoding batches, each with an access token and a
    /// refresh family recorded after all grants, come back joined to their own grant (the decoding threads finish
    /// the grants before the first access token is decoded), and expired ones stay out.
    #[test]
    fn grants_over_many_batches_keep_their_access_tokens_and_families() {
        let (dir, path) = temp_path();
        let key = SnapshotKey([3u8; 32]);
        let store = MemoryStore::new();
        // Tokens of 4 KiB: several decoding batches of grants, and more encoding batches than threads.
        let n = 3 * GRANTS_PER_BATCH * sealed_stream::workers() + 7;
        let mut issued = Vec::new();
        for i in 0..n {
            let upstream = format!("{i:08}-{}", "u".repeat(4096));
            let tokens = UpstreamTokens::new(upstream.clone(), Some(format!("r{i}")), 5000, None);
            let login = UpstreamLogin {
                credential: UpstreamCredential::Tokens(tokens.unwrap_or_else(|_| unreachable!())),
                identity: Identity { sub: format!("user-{i}"), ..Identity::default() },
            };
            let grant = Grant::new("c1".into(), vec!["openid".into()], None, login, 100);
            grant.extend_to(9000);
            let access = crate::crypto::random_token();
            let expires = if i % 5 == 0 { 150 } else { 4000 };
            store.access_tokens.insert(TokenHash::of(&access), AccessToken::new(grant.clone(), expires));
            let name = RefreshTokenName { family: FamilyId::random(), generation: 1 };
            let refresh = name.mint();
            let family = RefreshFamily {
                grant: grant.clone(),
                generation: 1,
                current: TokenHash::of(&refresh),
                expires_at: 9000,
                rotated: None,
            };
            store.refresh_families.insert(name.family.hash(), family);
            store.grants.insert(grant.id, grant);
            issued.push((access, refresh, upstream, expires));
        }
        assert!(write(&store, 200, &path, &key).is_ok());
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as usize;
        assert!(size > 4 * DECODE_BATCH, "{size} bytes: several decoding batches");
        let loaded = load(&path, &key, 200).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.grants.len(), n);
        let upstream_of = |g: Arc<Grant>| match &*g.upstream() {
            UpstreamCredential::Tokens(t) => t.access_token().to_owned(),
            UpstreamCredential::Local => String::new(),
        };
        for (access, refresh, upstream, expires) in issued {
            let grant = loaded.access_token(&TokenHash::of(&access), 200);
            if expires < 200 {
                assert!(grant.is_none(), "an expired access token was loaded");
            } else {
                assert_eq!(grant.map(upstream_of).as_deref(), Some(upstream.as_str()));
            }
            let family = loaded.refresh_token(&refresh).map(|(g, exp, current)| (upstream_of(g), exp, current));
            assert_eq!(family, Some((upstream, 9000, true)));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A version-3 file sealed with `key` around the plaintext `records` writes (each record length first).
    fn craft(path: &Path, key: &SnapshotKey, records: impl FnOnce(&mut Vec<u8>)) {
        let salt = [4u8; 32];
        let header = [&MAGIC[..], &[VERSION], &(CHUNK as u32).to_be_bytes(), &salt].concat();
        let mut plain = Vec::new();
        records(&mut plain);
        let mut file = Vec::new();
        let sealed = sealed_stream::seal_to(&mut file, &StreamKey::derive(&key.0, &salt), &header, CHUNK, |w| {
            w.write_all(&plain)
        });
        assert!(sealed.is_ok());
        assert!(std::fs::write(path, file).is_ok());
    }

    /// `n` grant records of about 1 KiB each (3000 of them: several decoding batches).
    fn some_grants(plain: &mut Vec<u8>, n: usize) {
        for i in 0..n {
            let tokens = UpstreamTokens::new(format!("{i}-{}", "t".repeat(1024)), None, 5000, None);
            let login = UpstreamLogin {
                credential: UpstreamCredential::Tokens(tokens.unwrap_or_else(|_| unreachable!())),
                identity: Identity { sub: format!("user-{i}"), ..Identity::default() },
            };
            let grant = Grant::new("c1".into(), vec!["openid".into()], None, login, 100);
            grant.extend_to(9000);
            assert!(append_grant(plain, &grant).is_ok());
        }
    }

    /// Authentic files (the right key) whose records do not add up are refused naming the file, wherever the
    /// bad record falls among the parallel batches, and the load does not hang.
    #[test]
    fn authentic_records_that_do_not_add_up_are_refused_naming_the_file() {
        let (dir, path) = temp_path();
        let key = SnapshotKey([3u8; 32]);
        fn end(plain: &mut Vec<u8>, records: u64) {
            assert!(append_record(plain, &Record::End { records }).is_ok());
        }
        type Records = Box<dyn FnOnce(&mut Vec<u8>)>;
        let cases: Vec<(&str, Records)> = vec![
            (
                "a grant that does not decode among thousands",
                Box::new(|p: &mut Vec<u8>| {
                    some_grants(p, 3000);
                    p.extend_from_slice(&[3, 0, 0, 0, TAG_GRANT, 0xff, 0xff]);
                    some_grants(p, 3000);
                    end(p, 6001);
                }),
            ),
            (
                "a count that differs",
                Box::new(|p: &mut Vec<u8>| {
                    some_grants(p, 3000);
                    end(p, 2999);
                }),
            ),
            (
                "records after the last",
                Box::new(|p: &mut Vec<u8>| {
                    some_grants(p, 10);
                    end(p, 10);
                    some_grants(p, 1);
                }),
            ),
            ("no last record", Box::new(|p: &mut Vec<u8>| some_grants(p, 3000))),
            (
                "an empty record",
                Box::new(|p: &mut Vec<u8>| {
                    some_grants(p, 10);
                    p.extend_from_slice(&[0, 0, 0, 0]);
                    end(p, 11);
                }),
            ),
            (
                "a record cut by the end of the stream",
                Box::new(|p: &mut Vec<u8>| {
                    some_grants(p, 10);
                    p.extend_from_slice(&[200, 0, 0, 0, TAG_GRANT, 1]);
                }),
            ),
        ];
        for (what, records) in cases {
            craft(&path, &key, records);
            match load(&path, &key, 200) {
                Err(e @ SnapshotError::Decode { .. }) => {
                    assert!(e.to_string().contains(&path.display().to_string()), "{what}: {e}");
                }
                Err(e) => panic!("{what}: {e}"),
                Ok(_) => panic!("{what}: loaded"),
            }
        }
        // The same crafting, adding up, loads: the refusals above are about the records.
        craft(&path, &key, |p| {
            some_grants(p, 3000);
            end(p, 3000);
        });
        assert_eq!(load(&path, &key, 200).map(|s| s.grants.len()).ok(), Some(3000));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
