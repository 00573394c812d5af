//! Parameters of `application/x-www-form-urlencoded` bodies and query strings.
//!
//! RFC 6749 §3.1 and §3.2: request and response parameters MUST NOT be included more than once, and parameters
//! sent without a value are treated as omitted. [`Params::parse`] refuses a repeated parameter by name.
//!
//! Errors are this module's own [`ParamError`]; `crate::error` turns one into RFC 6749 §5.2 `invalid_request`
//! (or a page, where the caller shows one), so this module imports nothing from the error layer.

use std::collections::HashMap;

/// Why a parameter list is refused. The message names the parameter, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    /// RFC 6749 §3.1: a parameter sent more than once.
    #[error("parameter `{0}` is repeated")]
    Repeated(String),
    /// A required parameter is absent (or empty, which counts as absent).
    #[error("missing parameter `{0}`")]
    Missing(String),
}

/// Decoded parameters, each present at most once.
#[derive(Debug, Default, Clone)]
pub struct Params {
    map: HashMap<String, String>,
}

impl Params {
    /// Parses `a=1&b=2`; a repeated name is refused, naming it.
    pub fn parse(input: &[u8]) -> Result<Self, ParamError> {
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(input) {
            if v.is_empty() {
                // §3.1: "Parameters sent without a value MUST be treated as if they were omitted".
                if map.contains_key(k.as_ref()) {
                    return Err(ParamError::Repeated(k.into_owned()));
                }
                continue;
            }
            if map.insert(k.clone().into_owned(), v.into_owned()).is_some() {
                return Err(ParamError::Repeated(k.into_owned()));
            }
        }
        Ok(Self { map })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    /// A required parameter; [`ParamError::Missing`] naming it when absent.
    pub fn require(&self, name: &str) -> Result<&str, ParamError> {
        self.get(name).ok_or_else(|| ParamError::Missing(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameter_is_refused_by_name() {
        let e = Params::parse(b"a=1&code=x&code=y").err();
        assert_eq!(e, Some(ParamError::Repeated("code".into())));
        assert_eq!(e.map(|e| e.to_string()).as_deref(), Some("parameter `code` is repeated"));
    }

    #[test]
    fn empty_values_count_as_omitted() {
        let p = Params::parse(b"scope=&state=s%20t").ok();
        assert_eq!(p.as_ref().and_then(|p| p.get("scope")), None);
        assert_eq!(p.as_ref().and_then(|p| p.get("state")), Some("s t"));
    }
}
