//! Parameters of `application/x-www-form-urlencoded` bodies and query strings.
//!
//! RFC 6749 §3.1 and §3.2: request and response parameters MUST NOT be included more than once, and parameters
//! sent without a value are treated as omitted. [`Params::parse`] refuses a repeated parameter by name.

use std::collections::HashMap;

use crate::error::OAuthError;

/// Decoded parameters, each present at most once.
#[derive(Debug, Default, Clone)]
pub struct Params {
    map: HashMap<String, String>,
}

impl Params {
    /// Parses `a=1&b=2`; a repeated name is `invalid_request` naming it.
    pub fn parse(input: &[u8]) -> Result<Self, OAuthError> {
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(input) {
            if v.is_empty() {
                // §3.1: "Parameters sent without a value MUST be treated as if they were omitted".
                if map.contains_key(k.as_ref()) {
                    return Err(OAuthError::invalid_request(format!("parameter `{k}` is repeated")));
                }
                continue;
            }
            if map.insert(k.clone().into_owned(), v.into_owned()).is_some() {
                return Err(OAuthError::invalid_request(format!("parameter `{k}` is repeated")));
            }
        }
        Ok(Self { map })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    /// A required parameter; `invalid_request` naming it when missing.
    pub fn require(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name).ok_or_else(|| OAuthError::invalid_request(format!("missing parameter `{name}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameter_is_refused_by_name() {
        let e = Params::parse(b"a=1&code=x&code=y").err();
        assert!(e.is_some_and(|e| e.description.contains("`code`")));
    }

    #[test]
    fn empty_values_count_as_omitted() {
        let p = Params::parse(b"scope=&state=s%20t").ok();
        assert_eq!(p.as_ref().and_then(|p| p.get("scope")), None);
        assert_eq!(p.as_ref().and_then(|p| p.get("state")), Some("s t"));
    }
}
