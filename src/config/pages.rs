//! `[pages]`: what the proxy's HTML pages (consent, login, errors) call things, and the optional logo.
//!
//! Invariants:
//! - Every name and description here is operator text, still escaped where it is shown
//!   ([`crate::http::html::escape`]); control and format characters are refused at start, naming the key.
//! - The logo is read once at start (by [`super::Files`]), at most `pages.logo_max_bytes`, with a content type from
//!   a fixed list of image extensions; nothing is read from disk while serving.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{invalid, is_scope_char, ConfigError};

/// Default `pages.product_name`.
pub const DEFAULT_PRODUCT_NAME: &str = "MCP sign-in";
/// Default `pages.logo_max_bytes` (64 KiB); at most [`MAX_LOGO_BYTES`].
pub const DEFAULT_LOGO_MAX_BYTES: usize = 64 * 1024;
/// The largest `pages.logo_max_bytes` accepted (1 MiB).
pub const MAX_LOGO_BYTES: usize = 1024 * 1024;
/// Longest product name, resource name or scope description (characters).
const MAX_TEXT_CHARS: usize = 200;

/// The `[pages]` table as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPages {
    pub(crate) product_name: Option<String>,
    pub(crate) resource_name: Option<String>,
    pub(crate) logo_file: Option<PathBuf>,
    pub(crate) logo_max_bytes: Option<usize>,
    #[serde(default)]
    pub(crate) scopes: BTreeMap<String, String>,
}

/// What the pages show.
#[derive(Debug, Clone)]
pub struct PagesConfig {
    /// The service's name, in every page's header and the login page's heading.
    pub product_name: String,
    /// The protected resource named on the consent page; default: the host of `server.public_url`.
    pub resource_name: String,
    /// The logo served at [`crate::http::html::LOGO_PATH`], when configured.
    pub logo: Option<Logo>,
    /// Operator descriptions of scopes, in words, shown on the consent page before the built-in ones.
    pub scope_descriptions: BTreeMap<String, String>,
}

/// A logo read at start.
#[derive(Clone)]
pub struct Logo {
    pub bytes: bytes::Bytes,
    pub content_type: &'static str,
}

impl PagesConfig {
    /// The header every branded page shows.
    pub fn brand(&self) -> crate::http::html::Brand<'_> {
        crate::http::html::Brand { product_name: &self.product_name, logo: self.logo.is_some() }
    }
}

impl std::fmt::Debug for Logo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Logo({} bytes, {})", self.bytes.len(), self.content_type)
    }
}

/// The content type of an image file by its extension (ASCII case-insensitive), or `None` when it is not one
/// the pages accept.
pub fn logo_content_type(path: &std::path::Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    Some(match ext.as_str() {
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        _ => return None,
    })
}

/// The logo's size cap, validated.
pub(crate) fn logo_max_bytes(raw: &RawPages) -> Result<usize, ConfigError> {
    let max = raw.logo_max_bytes.unwrap_or(DEFAULT_LOGO_MAX_BYTES);
    if max == 0 || max > MAX_LOGO_BYTES {
        return Err(invalid("pages.logo_max_bytes", format!("must be between 1 and {MAX_LOGO_BYTES}")));
    }
    Ok(max)
}

/// Reads the logo file, at most `max` bytes; more is an error naming the size.
pub(crate) fn read_logo(path: &std::path::Path, max: usize) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit).read_to_end(&mut bytes).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() > max {
        return Err(format!("{} is larger than pages.logo_max_bytes ({max} bytes)", path.display()));
    }
    Ok(bytes)
}

/// Operator text: not empty, at most [`MAX_TEXT_CHARS`] characters, no control or format characters.
fn text(key: &'static str, value: String) -> Result<String, ConfigError> {
    let value = value.trim().to_owned();
    if value.is_empty() || value.chars().count() > MAX_TEXT_CHARS {
        return Err(invalid(key, format!("must be 1 to {MAX_TEXT_CHARS} characters")));
    }
    if value.chars().any(crate::http::html::is_control_or_format) {
        return Err(invalid(key, "must not contain control or format characters"));
    }
    Ok(value)
}

/// Validates `[pages]`; `default_resource` is the host of `server.public_url`, `logo` what [`super::Files`] read.
pub(crate) fn validate(
    raw: RawPages,
    default_resource: &str,
    logo: Option<&Result<Vec<u8>, String>>,
) -> Result<PagesConfig, ConfigError> {
    logo_max_bytes(&raw)?;
    let product_name = text("pages.product_name", raw.product_name.unwrap_or_else(|| DEFAULT_PRODUCT_NAME.into()))?;
    let resource_name = text("pages.resource_name", raw.resource_name.unwrap_or_else(|| default_resource.into()))?;
    let logo = match (&raw.logo_file, logo) {
        (None, _) => None,
        (Some(path), read) => {
            let content_type = logo_content_type(path).ok_or_else(|| {
                invalid("pages.logo_file", "must end in .png, .svg, .jpg, .jpeg, .gif, .webp or .ico")
            })?;
            let bytes = match read {
                Some(Ok(bytes)) if !bytes.is_empty() => bytes,
                Some(Ok(_)) => return Err(invalid("pages.logo_file", "is empty")),
                Some(Err(message)) => return Err(invalid("pages.logo_file", message.clone())),
                None => return Err(invalid("pages.logo_file", "was not read")),
            };
            Some(Logo { bytes: bytes::Bytes::from(bytes.clone()), content_type })
        }
    };
    let mut scope_descriptions = BTreeMap::new();
    for (scope, description) in raw.scopes {
        if scope.is_empty() || !scope.chars().all(is_scope_char) {
            return Err(invalid("pages.scopes", format!("`{}` is not a scope name", scope.escape_debug())));
        }
        scope_descriptions.insert(scope, text("pages.scopes", description)?);
    }
    Ok(PagesConfig { product_name, resource_name, logo, scope_descriptions })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn raw(f: impl FnOnce(&mut RawPages)) -> RawPages {
        let mut r = RawPages::default();
        f(&mut r);
        r
    }

    fn key_of(r: Result<PagesConfig, ConfigError>) -> &'static str {
        match r {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn defaults_name_the_service_and_the_public_host() {
        let p = validate(RawPages::default(), "mcp.example.com", None).unwrap();
        assert_eq!(p.product_name, DEFAULT_PRODUCT_NAME);
        assert_eq!(p.resource_name, "mcp.example.com");
        assert!(p.logo.is_none() && p.scope_descriptions.is_empty());
    }

    #[test]
    fn bad_values_name_their_key() {
        let bidi = raw(|r| r.product_name = Some("Acme\u{202E}".into()));
        assert_eq!(key_of(validate(bidi, "h", None)), "pages.product_name");
        let empty = raw(|r| r.resource_name = Some("  ".into()));
        assert_eq!(key_of(validate(empty, "h", None)), "pages.resource_name");
        let scope = raw(|r| {
            r.scopes.insert("bad scope".into(), "x".into());
        });
        assert_eq!(key_of(validate(scope, "h", None)), "pages.scopes");
        let cap = raw(|r| r.logo_max_bytes = Some(MAX_LOGO_BYTES + 1));
        assert_eq!(key_of(validate(cap, "h", None)), "pages.logo_max_bytes");
        let ext = raw(|r| r.logo_file = Some("logo.html".into()));
        assert_eq!(key_of(validate(ext, "h", Some(&Ok(vec![1])))), "pages.logo_file");
        let unread = raw(|r| r.logo_file = Some("logo.png".into()));
        assert_eq!(key_of(validate(unread, "h", Some(&Err("too big".into())))), "pages.logo_file");
    }

    #[test]
    fn logo_type_comes_from_the_extension() {
        let p = raw(|r| r.logo_file = Some("/x/Logo.SVG".into()));
        let logo = validate(p, "h", Some(&Ok(b"<svg/>".to_vec()))).unwrap().logo.unwrap();
        assert_eq!(logo.content_type, "image/svg+xml");
        assert_eq!(&*logo.bytes, b"<svg/>");
    }

    #[test]
    fn logo_read_stops_past_the_cap() {
        let dir = std::env::temp_dir().join(format!("dcrp-logo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.png");
        std::fs::write(&path, vec![0u8; 10]).unwrap();
        assert_eq!(read_logo(&path, 10).unwrap().len(), 10);
        assert!(read_logo(&path, 9).unwrap_err().contains("pages.logo_max_bytes"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
