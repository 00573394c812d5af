//! Per-tool authorization of MCP calls (`[[policy.tools]]`), decided from the JSON-RPC body.
//!
//! - A rule names tools, prompts and resources by a glob (`*` matches any run of characters; ASCII case is
//!   ignored, so that a rule never misses a name an upstream might fold). It applies to `tools/call`
//!   (`params.name`), `prompts/get` (`params.name`), `resources/read` and `resources/subscribe` (`params.uri`,
//!   which must be a URL in the form a WHATWG parser serialises it: `check_resource_uri`) and
//!   `completion/complete` (the prompt's name or the resource template's URI in `params.ref`).
//! - Every matching rule must be satisfied: its `scopes` all granted to the token (RFC 6750 §3.1: otherwise a 403
//!   `insufficient_scope` step-up naming *all* the scopes the call needs, MCP 2026-07-28 "Scope Challenge
//!   Handling"), and one of its `groups` held by the user (the id_token's `groups` or `roles`; otherwise 403 with
//!   a JSON-RPC error: no scope would help). A refused call never reaches the upstream.
//! - The body is parsed once ([`parse_message`]): a JSON object or a JSON-RPC batch (2025-03-26) whose every
//!   element is judged; a duplicate object key anywhere is refused, since JSON parsers disagree on which copy
//!   wins and the upstream must act on exactly what was judged. For the same reason a member a server dispatches
//!   on (`jsonrpc`, `id`, `method`, `params`; in `params`: `name`, `uri`, `ref`, `arguments`; in `params.ref`:
//!   `type`, `name`, `uri`) must be spelled exactly: a key that case-insensitive parsers, Go's `encoding/json`
//!   (simple folding: `paramſ` is `params`) or NUL-cutting parsers would bind to one of them (`Name`, `METHOD`,
//!   `name\u0000`) is refused, in every element of a batch.
//! - `Mcp-Method` / `Mcp-Name` (MCP 2026-07-28 Streamable HTTP "Request Metadata", SEP-2243), when present, must
//!   equal the body's method and name, after the `=?base64?…?=` sentinel is decoded ([`check_headers`]): a header
//!   never lets a call past the policy (400, JSON-RPC `-32020` HeaderMismatch).
//! - `tools/list`, `prompts/list` and `resources/list` answers are filtered ([`filter_listing`]) to what the user
//!   may call, so that clients do not offer what will be refused.
//!
//! This module is a leaf: plain functions over strings and JSON values, unit-tested below.

pub mod listing;

use serde_json::Value;

pub use listing::filter_listing;

/// The longest glob accepted in `[[policy.tools]] match`.
pub const MAX_PATTERN_LEN: usize = 256;

/// A name glob: `*` matches any run of characters (none included); ASCII case is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The glob, lowercased (ASCII).
    glob: String,
}

impl Pattern {
    /// Checks a glob from the configuration.
    pub fn parse(glob: &str) -> Result<Self, String> {
        if glob.is_empty() {
            return Err("`match` must not be empty".to_owned());
        }
        if glob.len() > MAX_PATTERN_LEN {
            return Err(format!("`match` is longer than {MAX_PATTERN_LEN} bytes"));
        }
        if glob.chars().any(char::is_control) {
            return Err(format!("`match` `{}` contains a control character", glob.escape_debug()));
        }
        Ok(Self { glob: glob.to_ascii_lowercase() })
    }

    /// Whether `name` matches; linear in the lengths (greedy `*` with one backtrack point).
    pub fn matches(&self, name: &str) -> bool {
        let (p, n) = (self.glob.as_bytes(), name.as_bytes());
        let (mut pi, mut ni) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ni < n.len() {
            if pi < p.len() && p[pi] != b'*' && p[pi] == n[ni].to_ascii_lowercase() {
                pi += 1;
                ni += 1;
            } else if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ni));
                pi += 1;
            } else if let Some((sp, sn)) = star {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&b| b == b'*')
    }

    /// The glob as configured (lowercased).
    pub fn as_str(&self) -> &str {
        &self.glob
    }
}

/// One `[[policy.tools]]` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolRule {
    pub pattern: Pattern,
    /// Scopes the access token must carry, all of them.
    pub scopes: Vec<String>,
    /// Entra group object ids or app role values; the user must hold one (empty: no group condition).
    pub groups: Vec<String>,
}

/// Who calls: the token's scope and the user's groups and roles from the IdP's id_token.
#[derive(Debug, Clone, Copy)]
pub struct Principal<'a> {
    /// Space-separated scopes of the access token.
    pub scope: &'a str,
    pub groups: &'a [String],
    pub roles: &'a [String],
    /// The id_token carried a groups overage pointer (`_claim_names.groups`) instead of the list.
    pub groups_overage: bool,
}

impl Principal<'_> {
    fn holds_one_of(&self, wanted: &[String]) -> bool {
        wanted.iter().any(|w| self.groups.contains(w) || self.roles.contains(w))
    }
}

/// The decision on one call or a whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Scopes would help: every scope the call(s) need that the token lacks, in rule order.
    StepUp {
        missing: Vec<String>,
    },
    /// No scope would help: the user lacks a required group or role.
    Forbidden {
        name: String,
        overage: bool,
    },
}

/// The decision on one call of `name` (a tool or prompt name, or a resource URI).
pub fn decide(rules: &[ToolRule], name: &str, who: &Principal<'_>) -> Verdict {
    let mut missing: Vec<String> = Vec::new();
    for rule in rules.iter().filter(|r| r.pattern.matches(name)) {
        if !rule.groups.is_empty() && !who.holds_one_of(&rule.groups) {
            return Verdict::Forbidden { name: name.to_owned(), overage: who.groups_overage };
        }
        for scope in &rule.scopes {
            if !who.scope.split(' ').any(|g| g == scope) && !missing.contains(scope) {
                missing.push(scope.clone());
            }
        }
    }
    if missing.is_empty() {
        Verdict::Allow
    } else {
        Verdict::StepUp { missing }
    }
}

/// The decision on a whole message: a refusal of any element refuses it; otherwise the step-up names every
/// scope any element lacks.
pub fn decide_message(rules: &[ToolRule], message: &Message, who: &Principal<'_>) -> Verdict {
    let mut missing: Vec<String> = Vec::new();
    for call in &message.calls {
        let Some(name) = &call.name else { continue };
        match decide(rules, name, who) {
            Verdict::Allow => {}
            Verdict::StepUp { missing: m } => {
                for s in m {
                    if !missing.contains(&s) {
                        missing.push(s);
                    }
                }
            }
            forbidden @ Verdict::Forbidden { .. } => return forbidden,
        }
    }
    if missing.is_empty() {
        Verdict::Allow
    } else {
        Verdict::StepUp { missing }
    }
}

/// Whether the user may call `name`: what listings are filtered by.
pub fn may_call(rules: &[ToolRule], name: &str, who: &Principal<'_>) -> bool {
    decide(rules, name, who) == Verdict::Allow
}

/// One JSON-RPC request or notification of a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// `null` for a notification.
    pub id: Value,
    pub method: String,
    /// What a rule matches: `params.name` of `tools/call` and `prompts/get`, `params.uri` of `resources/read`.
    pub name: Option<String>,
}

/// A parsed MCP POST body.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    pub calls: Vec<Call>,
    /// A JSON-RPC batch (an array), as 2025-03-26 allows.
    pub batch: bool,
}

impl Message {
    /// The id to answer a refusal with: the single call's, or `null` for a batch.
    pub fn reply_id(&self) -> Value {
        match (self.batch, self.calls.first()) {
            (false, Some(c)) => c.id.clone(),
            _ => Value::Null,
        }
    }

    /// Whether the message asks for a listing that [`filter_listing`] narrows.
    pub fn lists(&self) -> bool {
        self.calls.iter().any(|c| listing::LISTS.iter().any(|(m, _, _)| *m == c.method))
    }
}

/// Why a body cannot be judged (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyProblem {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body repeats the object key `{0}`")]
    DuplicateKey(String),
    #[error("{0}")]
    Invalid(String),
}

/// The methods whose target a rule judges, and the parameter naming it.
const GOVERNED: [(&str, &str); 4] =
    [("tools/call", "name"), ("prompts/get", "name"), ("resources/read", "uri"), ("resources/subscribe", "uri")];

/// A resource URI as it is judged: exactly as a WHATWG URL parser serialises it (the TypeScript SDK looks
/// resources up by `new URL(uri).toString()`, the Python SDK normalises dot segments), so that a rule on
/// `file:///secret*` sees every spelling of that file. What does not parse, or parses to another string (dot
/// segments, `localhost`, case, surrounding whitespace), carries userinfo, or escapes an unreserved character
/// is refused: the upstream could read it as a resource the rule never saw.
fn check_resource_uri(uri: &str) -> Result<(), BodyProblem> {
    let bad = |why: String| Err(BodyProblem::Invalid(format!("`params.uri` {why}")));
    let parsed = match url::Url::parse(uri) {
        Ok(u) => u,
        Err(e) => return bad(format!("is not a URL ({e})")),
    };
    if parsed.as_str() != uri {
        return bad(format!(
            "is not in the form URL parsers read it in (`{}`): no dot segments, `localhost`, case changes or \
             surrounding spaces",
            parsed.as_str().escape_debug()
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return bad("must not carry a user name or password".to_owned());
    }
    let bytes = uri.as_bytes();
    let escaped_unreserved = bytes.windows(3).any(|w| {
        w[0] == b'%'
            && std::str::from_utf8(&w[1..])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    });
    if escaped_unreserved {
        return bad("escapes an unreserved character (`%41` for `A`): send it unescaped".to_owned());
    }
    Ok(())
}

/// What `completion/complete` completes (`params.ref`): a prompt by name, or a resource template by its URI,
/// judged by the rules on that name. Another kind of reference is refused.
fn completion_target(params: Option<&Value>) -> Result<String, BodyProblem> {
    let reference = params.and_then(|p| p.get("ref")).and_then(Value::as_object);
    let field = |name: &str| reference.and_then(|r| r.get(name)).and_then(Value::as_str).map(str::to_owned);
    match field("type").as_deref() {
        Some("ref/prompt") => field("name").ok_or_else(|| {
            BodyProblem::Invalid("`completion/complete` of a prompt needs a string `params.ref.name`".into())
        }),
        Some("ref/resource") => field("uri").ok_or_else(|| {
            BodyProblem::Invalid("`completion/complete` of a resource needs a string `params.ref.uri`".into())
        }),
        _ => Err(BodyProblem::Invalid(
            "`completion/complete` needs `params.ref` of type `ref/prompt` or `ref/resource`".into(),
        )),
    }
}

/// The members of a JSON-RPC message an MCP server dispatches on.
const MESSAGE_MEMBERS: [&str; 4] = ["jsonrpc", "id", "method", "params"];
/// The members of `params` the policy judges or a server dispatches on.
const PARAMS_MEMBERS: [&str; 4] = ["name", "uri", "ref", "arguments"];
/// The members of `params.ref` (`completion/complete`).
const REF_MEMBERS: [&str; 3] = ["type", "name", "uri"];

/// A key as a lenient parser may bind it: NULs dropped (parsers that cut a key at NUL), then case folded, with
/// Go's simple folding of `ſ` (U+017F) to `s` and of the Kelvin sign to `k` (`encoding/json` binds keys so).
fn lenient_key(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '\0')
        .flat_map(|c| match c {
            '\u{17f}' => 's'.to_lowercase(),
            '\u{212a}' => 'k'.to_lowercase(),
            other => other.to_lowercase(),
        })
        .collect()
}

/// Refuses a key that a lenient parser (case-insensitive, Go's folding, NUL-cutting) would read as one of
/// `members` without being spelled exactly so: the upstream could act on a member the policy never saw
/// (`{"name":"search","Name":"db_secret"}`; CVE-2026-27896).
fn check_spelling(obj: &serde_json::Map<String, Value>, members: &[&str]) -> Result<(), BodyProblem> {
    for key in obj.keys() {
        if members.contains(&key.as_str()) {
            continue;
        }
        let lenient = lenient_key(key);
        if let Some(member) = members.iter().find(|m| **m == lenient) {
            return Err(BodyProblem::Invalid(format!(
                "the member `{}` would be read as `{member}` by case-insensitive JSON parsers; spell it `{member}`",
                key.escape_debug()
            )));
        }
    }
    Ok(())
}

/// Parses an MCP POST body: a JSON-RPC message or batch. Responses (no `method`) pass without a name; a governed
/// method whose target is missing or not a string is refused, since the upstream's reading of it is unknown.
pub fn parse_message(body: &[u8]) -> Result<Message, BodyProblem> {
    let StrictValue(value) = serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        match text.strip_prefix(DUPLICATE).and_then(|r| r.split('`').next()) {
            Some(key) => BodyProblem::DuplicateKey(key.to_owned()),
            None => BodyProblem::NotJson(text),
        }
    })?;
    let (items, batch) = match &value {
        Value::Array(items) if items.is_empty() => return Err(BodyProblem::Invalid("an empty batch".into())),
        Value::Array(items) => (items.iter().collect::<Vec<_>>(), true),
        Value::Object(_) => (vec![&value], false),
        _ => return Err(BodyProblem::Invalid("a JSON-RPC message must be an object or an array".into())),
    };
    let mut calls = Vec::with_capacity(items.len());
    for item in items {
        let obj = item.as_object().ok_or_else(|| BodyProblem::Invalid("a batch element is not an object".into()))?;
        check_spelling(obj, &MESSAGE_MEMBERS)?;
        if let Some(Value::Object(params)) = obj.get("params") {
            check_spelling(params, &PARAMS_MEMBERS)?;
            if let Some(Value::Object(reference)) = params.get("ref") {
                check_spelling(reference, &REF_MEMBERS)?;
            }
        }
        let method = match obj.get("method") {
            None => continue,
            Some(Value::String(m)) => m.clone(),
            Some(_) => return Err(BodyProblem::Invalid("`method` must be a string".into())),
        };
        let name = match GOVERNED.iter().find(|(m, _)| *m == method) {
            None if method == "completion/complete" => Some(completion_target(obj.get("params"))?),
            None => None,
            Some((_, param)) => match obj.get("params").and_then(|p| p.get(param)) {
                Some(Value::String(n)) => {
                    if *param == "uri" {
                        check_resource_uri(n)?;
                    }
                    Some(n.clone())
                }
                _ => return Err(BodyProblem::Invalid(format!("`{method}` needs a string `params.{param}`"))),
            },
        };
        calls.push(Call { id: obj.get("id").cloned().unwrap_or(Value::Null), method, name });
    }
    Ok(Message { calls, batch })
}

/// Why the request metadata headers disagree with the body (400, JSON-RPC `-32020` HeaderMismatch).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("header mismatch: {0}")]
pub struct HeaderMismatch(pub String);

/// `Mcp-Method` and `Mcp-Name`, each given as every value the request carries: present, they must be one value
/// equal to the body's method and name (the name after decoding a `=?base64?…?=` sentinel). A batch carries no
/// such headers; a name header on a method without a name is a mismatch.
pub fn check_headers(method: &[&[u8]], name: &[&[u8]], message: &Message) -> Result<(), HeaderMismatch> {
    if method.is_empty() && name.is_empty() {
        return Ok(());
    }
    let single = match (message.batch, message.calls.as_slice()) {
        (false, [call]) => call,
        _ => return Err(HeaderMismatch("Mcp-Method / Mcp-Name on a message that is not one request".into())),
    };
    match method {
        [] => {}
        [m] if *m == single.method.as_bytes() => {}
        [_] => return Err(HeaderMismatch(format!("Mcp-Method does not match the body's `{}`", single.method))),
        _ => return Err(HeaderMismatch("Mcp-Method is repeated".into())),
    }
    match (name, &single.name) {
        ([], _) => Ok(()),
        ([n], Some(body_name)) if decode_name(n).as_deref() == Some(body_name.as_str()) => Ok(()),
        ([_], Some(_)) => Err(HeaderMismatch("Mcp-Name does not match the body".into())),
        ([_], None) => Err(HeaderMismatch(format!("Mcp-Name on `{}`, which names nothing", single.method))),
        _ => Err(HeaderMismatch("Mcp-Name is repeated".into())),
    }
}

/// An `Mcp-Name` value: visible ASCII as is, or the UTF-8 inside `=?base64?…?=`; `None` when neither.
pub fn decode_name(raw: &[u8]) -> Option<String> {
    use base64::Engine as _;
    let text = std::str::from_utf8(raw).ok()?;
    if let Some(inner) = text.strip_prefix("=?base64?").and_then(|r| r.strip_suffix("?=")) {
        let bytes = base64::engine::general_purpose::STANDARD.decode(inner).ok()?;
        return String::from_utf8(bytes).ok();
    }
    text.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\t').then(|| text.to_owned())
}

const DUPLICATE: &str = "duplicate key `";

/// JSON parsed in one pass that fails on the first object key that appears twice in one object.
struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if obj.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("{DUPLICATE}{key}`")));
            }
            let StrictValue(v) = map.next_value()?;
            obj.insert(key, v);
        }
        Ok(Value::Object(obj))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> Vec<ToolRule> {
        let rule = |m: &str, scopes: &[&str], groups: &[&str]| ToolRule {
            pattern: Pattern::parse(m).unwrap_or_else(|e| panic!("{e}")),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            groups: groups.iter().map(|s| (*s).to_owned()).collect(),
        };
        vec![
            rule("delete_*", &["Admin.Write"], &[]),
            rule("*_secret", &[], &["admins"]),
            rule("wipe", &["A", "B"], &[]),
        ]
    }

    fn user<'a>(scope: &'a str, groups: &'a [String]) -> Principal<'a> {
        Principal { scope, groups, roles: &[], groups_overage: false }
    }

    #[test]
    fn members_a_lenient_parser_would_bind_otherwise_are_refused_at_every_judged_level() {
        let refused = |body: &str| matches!(parse_message(body.as_bytes()), Err(BodyProblem::Invalid(m)) if m.contains("spell it"));
        for body in [
            r#"{"method":"tools/call","params":{"name":"search","Name":"db_secret"}}"#,
            r#"{"method":"tools/call","params":{"name":"search","NAME":"db_secret"}}"#,
            r#"{"method":"tools/list","Method":"tools/call","params":{"name":"db_secret"}}"#,
            r#"{"method":"tools/call","params":{"name":"search"},"Params":{"name":"db_secret"}}"#,
            "{\"method\":\"tools/call\",\"params\":{\"name\":\"search\"},\"param\u{17f}\":{\"name\":\"db_secret\"}}",
            r#"{"method":"tools/call","params":{"name":"search","name\u0000":"db_secret"}}"#,
            r#"{"method\u0000":"tools/call","method":"tools/list"}"#,
            r#"{"method":"tools/call","params":{"name":"search","Arguments":{}}}"#,
            r#"{"method":"completion/complete","params":{"ref":{"type":"ref/prompt","Name":"x_secret"}}}"#,
            r#"[{"method":"tools/call","params":{"name":"search"}},{"method":"tools/call","params":{"name":"a","nAme":"db_secret"}}]"#,
            r#"{"ID":1,"method":"ping"}"#,
        ] {
            assert!(refused(body), "{body}");
        }
        // Exact spellings pass, and tool arguments are the tool's business.
        let ok = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search","arguments":{"Name":"x","NAME":"y"}}}"#;
        assert!(parse_message(ok.as_bytes()).is_ok());
    }

    #[test]
    fn resource_uris_are_judged_as_url_parsers_serialise_them_and_completions_by_their_target() {
        let read = |uri: &str| {
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": uri}});
            parse_message(body.to_string().as_bytes())
        };
        assert_eq!(read("file:///secret").map(|m| m.calls[0].name.clone()), Ok(Some("file:///secret".into())));
        assert!(read("https://example.com/a/b?q=1").is_ok());
        for bad in [
            "file:///./secret",
            "file:///x/../secret",
            "file://localhost/secret",
            " file:///secret",
            "file:///secret ",
            "FILE:///secret",
            "file:///%73ecret",
            "https://user:pw@example.com/secret",
            "secret",
            "https://EXAMPLE.com/secret",
        ] {
            assert!(matches!(read(bad), Err(BodyProblem::Invalid(_))), "{bad}");
        }
        let subscribe = json!({"jsonrpc": "2.0", "id": 1, "method": "resources/subscribe",
            "params": {"uri": "file:///x/../secret"}});
        assert!(parse_message(subscribe.to_string().as_bytes()).is_err());
        let complete = |reference: Value| {
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": "completion/complete",
                "params": {"ref": reference, "argument": {"name": "a", "value": "b"}}});
            parse_message(body.to_string().as_bytes()).map(|m| m.calls[0].name.clone())
        };
        assert_eq!(complete(json!({"type": "ref/prompt", "name": "db_secret"})), Ok(Some("db_secret".into())));
        assert_eq!(
            complete(json!({"type": "ref/resource", "uri": "file:///{path}"})),
            Ok(Some("file:///{path}".into()))
        );
        assert!(complete(json!({"type": "ref/other", "name": "x"})).is_err());
        assert!(complete(json!({"type": "ref/prompt"})).is_err());
    }

    #[test]
    fn globs_match_whole_names_without_case() {
        let p = |g: &str| Pattern::parse(g).unwrap_or_else(|e| panic!("{e}"));
        assert!(p("delete_*").matches("delete_user"));
        assert!(p("delete_*").matches("DELETE_user"));
        assert!(p("delete_*").matches("delete_"));
        assert!(!p("delete_*").matches("undelete_user"));
        assert!(p("*").matches(""));
        assert!(p("a*b*c").matches("aXbYbZc"));
        assert!(!p("a*b*c").matches("aXbYbZ"));
        assert!(p("search").matches("Search"));
        assert!(!p("search").matches("search2"));
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse("a\nb").is_err());
    }

    #[test]
    fn scopes_step_up_with_every_missing_scope_and_groups_forbid() {
        let r = rules();
        let none: Vec<String> = vec![];
        let admins = vec!["admins".to_owned()];
        assert_eq!(decide(&r, "search", &user("openid", &none)), Verdict::Allow);
        assert_eq!(
            decide(&r, "delete_user", &user("openid", &none)),
            Verdict::StepUp { missing: vec!["Admin.Write".into()] }
        );
        assert_eq!(decide(&r, "delete_user", &user("openid Admin.Write", &none)), Verdict::Allow);
        assert_eq!(decide(&r, "wipe", &user("B", &none)), Verdict::StepUp { missing: vec!["A".into()] });
        assert!(matches!(decide(&r, "db_secret", &user("openid", &none)), Verdict::Forbidden { .. }));
        assert_eq!(decide(&r, "db_secret", &user("openid", &admins)), Verdict::Allow);
        let roles = vec!["admins".to_owned()];
        let by_role = Principal { scope: "", groups: &[], roles: &roles, groups_overage: false };
        assert_eq!(decide(&r, "db_secret", &by_role), Verdict::Allow);
        // A call matching a group rule and a scope rule: the group refusal wins, no step-up would help.
        assert!(matches!(decide(&r, "delete_secret", &user("", &none)), Verdict::Forbidden { .. }));
    }

    #[test]
    fn a_batch_is_judged_element_by_element() {
        let r = rules();
        let none: Vec<String> = vec![];
        let body = json!([
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search"}},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "delete_x"}},
            {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "wipe"}}
        ]);
        let m = parse_message(body.to_string().as_bytes()).unwrap_or_default();
        assert!(m.batch);
        assert_eq!(
            decide_message(&r, &m, &user("", &none)),
            Verdict::StepUp { missing: vec!["Admin.Write".into(), "A".into(), "B".into()] }
        );
        assert_eq!(m.reply_id(), Value::Null);
    }

    #[test]
    fn bodies_that_could_be_read_two_ways_are_refused() {
        let dup = br#"{"method":"tools/call","params":{"name":"search","name":"delete_all"},"id":1}"#;
        assert_eq!(parse_message(dup), Err(BodyProblem::DuplicateKey("name".into())));
        let dup_method = br#"{"method":"tools/list","method":"tools/call","params":{"name":"x"}}"#;
        assert_eq!(parse_message(dup_method), Err(BodyProblem::DuplicateKey("method".into())));
        for bad in [
            &br#"{"method":"tools/call","params":{"name":5},"id":1}"#[..],
            br#"{"method":"tools/call","id":1}"#,
            br#"{"method":7}"#,
            br#"[]"#,
            br#"[1]"#,
            br#""x""#,
            br#"{"method":"tools/call""#,
        ] {
            assert!(parse_message(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let ok = parse_message(br#"{"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"file:///x"}}"#);
        assert_eq!(ok.map(|m| m.calls[0].name.clone()), Ok(Some("file:///x".to_owned())));
        // Responses (the client answering the server) carry no method and name nothing.
        assert_eq!(parse_message(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).map(|m| m.calls.len()), Ok(0));
    }

    #[test]
    fn request_headers_must_equal_the_body() {
        let m = |v: Value| parse_message(v.to_string().as_bytes()).unwrap_or_default();
        let call = m(json!({"id": 1, "method": "tools/call", "params": {"name": "search"}}));
        assert!(check_headers(&[], &[], &call).is_ok());
        assert!(check_headers(&[b"tools/call"], &[b"search"], &call).is_ok());
        assert!(check_headers(&[b"tools/call"], &[], &call).is_ok());
        assert!(check_headers(&[b"tools/call"], &[b"=?base64?c2VhcmNo?="], &call).is_ok());
        assert!(check_headers(&[b"tools/list"], &[b"search"], &call).is_err());
        assert!(check_headers(&[b"tools/call"], &[b"delete_all"], &call).is_err());
        assert!(check_headers(&[b"tools/call"], &[b"Search"], &call).is_err());
        assert!(check_headers(&[b"tools/call", b"tools/call"], &[], &call).is_err());
        assert!(check_headers(&[], &[b"search", b"search"], &call).is_err());
        assert!(check_headers(&[], &[b"=?base64?!!?="], &call).is_err());
        let list = m(json!({"id": 1, "method": "tools/list"}));
        assert!(check_headers(&[b"tools/list"], &[], &list).is_ok());
        assert!(check_headers(&[b"tools/list"], &[b"x"], &list).is_err());
        let batch = m(json!([{"id": 1, "method": "tools/list"}]));
        assert!(check_headers(&[b"tools/list"], &[], &batch).is_err());
        assert_eq!(decode_name("=?base64?5LiW55WM?=".as_bytes()).as_deref(), Some("世界"));
    }
}
