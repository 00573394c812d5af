//! The files a config names, read in a step of their own: parsing and validation do no I/O, and tests feed
//! [`Files`] directly.
//!
//! Read: the snapshot key file (`store.snapshot_key_file`), only when a snapshot is configured and
//! `DCR_PROXY_SNAPSHOT_KEY` is not set; whether `client_metadata_documents.extra_ca_file` is a file (its
//! certificates are loaded when the fetcher is built); the logo `pages.logo_file`, at most `pages.logo_max_bytes`. TLS certificates are read by the server, which reloads them.

use super::env::{self, Env};
use super::raw::RawConfig;

/// What the file system says about the files a config names.
#[derive(Debug, Clone, Default)]
pub struct Files {
    /// The text of `store.snapshot_key_file`, or why it could not be read; `None` when it was not needed.
    pub snapshot_key: Option<Result<String, String>>,
    /// Whether `client_metadata_documents.extra_ca_file`, when set, is a file.
    pub extra_ca_file_is_file: bool,
    /// The bytes of `pages.logo_file` (at most `pages.logo_max_bytes`), or why they could not be read; `None` when
    /// no logo is configured or its size cap is invalid (validation names the key).
    pub logo: Option<Result<Vec<u8>, String>>,
}

impl Files {
    /// Reads what `raw` names from the file system.
    pub(crate) fn read(raw: &RawConfig, env: &Env<'_>) -> Self {
        let redis = raw.store.backend.as_deref() == Some("redis");
        let snapshot_key = match (raw.store.snapshot_path.is_some() || redis, &raw.store.snapshot_key_file) {
            (true, Some(file)) if env.get(env::SNAPSHOT_KEY).is_none() => {
                Some(std::fs::read_to_string(file).map_err(|e| e.to_string()))
            }
            _ => None,
        };
        let extra_ca_file_is_file = raw.client_metadata_documents.extra_ca_file.as_ref().is_some_and(|p| p.is_file());
        let logo = match (&raw.pages.logo_file, super::pages::logo_max_bytes(&raw.pages)) {
            (Some(path), Ok(max)) => Some(super::pages::read_logo(path, max)),
            _ => None,
        };
        Self { snapshot_key, extra_ca_file_is_file, logo }
    }
}
