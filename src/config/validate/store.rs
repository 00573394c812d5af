//! `[store]`: memory (snapshots and their keys) or Redis (URL, TLS, keys).

use super::*;

pub(super) fn validate_store(raw: RawStore, env: &Env<'_>, files: &Files) -> Result<StoreConfig, ConfigError> {
    let redis = validate_redis(&raw, env, files)?;
    let Some(path) = raw.snapshot_path.clone() else {
        return Ok(StoreConfig { snapshot: None, redis });
    };
    if redis.is_some() {
        return Err(invalid(
            "store.snapshot_path",
            "with store.backend = \"redis\" the state lives in Redis: remove snapshot_path (move an existing \
             snapshot in with `dcr-proxy store import`)",
        ));
    }
    let key = snapshot_key(&raw, env, files, "a snapshot")?;
    let interval = duration("store.snapshot_interval", raw.snapshot_interval, Duration::from_secs(30))?;
    if interval < Duration::from_millis(100) {
        return Err(invalid("store.snapshot_interval", "must be at least 100ms"));
    }
    let previous_key = match env.get(env::SNAPSHOT_KEY_PREVIOUS) {
        None => None,
        Some(text) => Some(parse_snapshot_key(&text).ok_or_else(|| {
            invalid(
                "store.snapshot_key_file",
                "DCR_PROXY_SNAPSHOT_KEY_PREVIOUS must be 32 bytes as base64 or 64 hex digits",
            )
        })?),
    };
    Ok(StoreConfig {
        snapshot: Some(SnapshotConfig {
            path,
            interval,
            key,
            previous_key,
            start_empty_on_error: raw.start_empty_on_bad_snapshot,
        }),
        redis,
    })
}

/// The snapshot key (`DCR_PROXY_SNAPSHOT_KEY` or `store.snapshot_key_file`), required by `what`.
pub(super) fn snapshot_key(
    raw: &RawStore,
    env: &Env<'_>,
    files: &Files,
    what: &str,
) -> Result<SnapshotKey, ConfigError> {
    let key_text = match (env.get(env::SNAPSHOT_KEY), &raw.snapshot_key_file) {
        (Some(k), _) if k.trim().is_empty() => {
            return Err(invalid(
                env::SNAPSHOT_KEY.name,
                "the environment variable is set but empty: put 32 random bytes there as base64 or 64 hex digits \
                 (e.g. `openssl rand -base64 32`), or unset it and use store.snapshot_key_file",
            ))
        }
        (Some(k), _) => parse_snapshot_key(&k).map(|_| k).ok_or_else(|| {
            invalid(env::SNAPSHOT_KEY.name, "the environment variable must hold 32 bytes as base64 or 64 hex digits")
        })?,
        (None, Some(file)) => match &files.snapshot_key {
            Some(Ok(text)) => text.clone(),
            Some(Err(e)) => {
                return Err(invalid("store.snapshot_key_file", format!("cannot read {}: {e}", file.display())))
            }
            None => return Err(invalid("store.snapshot_key_file", format!("{} was not read", file.display()))),
        },
        (None, None) => {
            return Err(invalid(
                "store.snapshot_key_file",
                format!(
                    "{what} needs a key: set DCR_PROXY_SNAPSHOT_KEY or store.snapshot_key_file \
                     (32 random bytes as base64 or 64 hex digits, e.g. `openssl rand -base64 32`)"
                ),
            ))
        }
    };
    parse_snapshot_key(&key_text).ok_or_else(|| {
        invalid("store.snapshot_key_file", "the snapshot key must be 32 bytes as base64 or 64 hex digits")
    })
}

/// `store.backend`, `store.redis_url` (`DCR_PROXY_REDIS_URL` overrides it; `redis://` or `rediss://`, several
/// nodes separated by commas only with `store.redis_cluster = true`), `store.redis_cache_ttl` (default 1 s, at most
/// 1 s), `store.redis_cache_entries` (default 100000), the TLS files (`store.redis_ca_file`, the client
/// certificate and key together, only with `rediss://`) and `store.redis_stats_interval` (default 30 s, at least
/// 1 s).
pub(super) fn validate_redis(raw: &RawStore, env: &Env<'_>, files: &Files) -> Result<Option<RedisConfig>, ConfigError> {
    match raw.backend.as_deref() {
        None | Some("memory") => return Ok(None),
        Some("redis") => {}
        Some(_) => return Err(invalid("store.backend", "must be \"memory\" or \"redis\"")),
    }
    let url = env.get(env::REDIS_URL).or_else(|| raw.redis_url.clone()).ok_or_else(|| {
        invalid("store.redis_url", "store.backend = \"redis\" needs store.redis_url or DCR_PROXY_REDIS_URL")
    })?;
    let url = RedisUrl(url);
    let nodes = url.nodes();
    if nodes.is_empty() {
        return Err(invalid("store.redis_url", "names no node"));
    }
    if nodes.iter().any(|n| !n.starts_with("redis://") && !n.starts_with("rediss://")) {
        return Err(invalid("store.redis_url", "every node must start with redis:// or rediss:// (TLS)"));
    }
    let tls = nodes[0].starts_with("rediss://");
    if nodes.iter().any(|n| n.starts_with("rediss://") != tls) {
        return Err(invalid("store.redis_url", "the nodes must all be redis:// or all rediss://"));
    }
    if nodes.len() > 1 && !raw.redis_cluster {
        return Err(invalid(
            "store.redis_url",
            "lists several nodes: that is a Redis Cluster, say so with store.redis_cluster = true",
        ));
    }
    for (key, file) in [
        ("store.redis_ca_file", &raw.redis_ca_file),
        ("store.redis_client_cert_file", &raw.redis_client_cert_file),
        ("store.redis_client_key_file", &raw.redis_client_key_file),
    ] {
        if file.is_some() && !tls {
            return Err(invalid(key, "is for TLS: store.redis_url must then start with rediss://"));
        }
    }
    if raw.redis_client_cert_file.is_some() != raw.redis_client_key_file.is_some() {
        let key = if raw.redis_client_cert_file.is_some() {
            "store.redis_client_key_file"
        } else {
            "store.redis_client_cert_file"
        };
        return Err(invalid(key, "a client certificate needs both store.redis_client_cert_file and its key file"));
    }
    let key = snapshot_key(raw, env, files, "store.backend = \"redis\"")?;
    let cache_ttl = duration("store.redis_cache_ttl", raw.redis_cache_ttl.clone(), Duration::from_secs(1))?;
    if cache_ttl > Duration::from_secs(1) {
        return Err(invalid("store.redis_cache_ttl", "must be at most 1s (revocations must reach every replica)"));
    }
    let cache_entries = match raw.redis_cache_entries {
        Some(0) => return Err(invalid("store.redis_cache_entries", "must be at least 1")),
        n => n.unwrap_or(100_000),
    };
    let stats_interval =
        duration("store.redis_stats_interval", raw.redis_stats_interval.clone(), Duration::from_secs(30))?;
    if stats_interval < Duration::from_secs(1) {
        return Err(invalid("store.redis_stats_interval", "must be at least 1s"));
    }
    Ok(Some(RedisConfig {
        url,
        key,
        cache_ttl,
        cache_entries,
        cluster: raw.redis_cluster,
        ca_file: raw.redis_ca_file.clone(),
        client_cert_file: raw.redis_client_cert_file.clone(),
        client_key_file: raw.redis_client_key_file.clone(),
        stats_interval,
        refresh_lock: refresh_lock(Duration::from_secs(10)),
    }))
}
