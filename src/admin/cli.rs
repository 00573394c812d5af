//! The client side of the admin API, for `dcr-proxy admin …`: one request per command, the answer as JSON or as
//! a table for people.
//!
//! Invariants: the admin token is sent only as a bearer to the URL the operator gave (or the config's
//! `admin.listen`), never printed; no redirect is followed (a redirect would carry it elsewhere).

use serde_json::Value;

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Clients,
    Grants { subject: Option<String>, client_id: Option<String> },
    RevokeGrant(String),
    RevokeUser(String),
    RevokeClient(String),
    Registration(bool),
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the admin API: {0}")]
    Unreachable(String),
    #[error("the admin API answered {status}: {message}")]
    Refused { status: u16, message: String },
}

impl Request {
    /// The method, path and query parameters of the request.
    fn parts(&self) -> (reqwest::Method, &'static str, Vec<(&'static str, String)>) {
        use reqwest::Method;
        match self {
            Self::Clients => (Method::GET, "/admin/clients", vec![]),
            Self::Grants { subject, client_id } => {
                let mut q = Vec::new();
                if let Some(s) = subject {
                    q.push(("subject", s.clone()));
                }
                if let Some(c) = client_id {
                    q.push(("client_id", c.clone()));
                }
                (Method::GET, "/admin/grants", q)
            }
            Self::RevokeGrant(id) => (Method::POST, "/admin/revoke-grant", vec![("id", id.clone())]),
            Self::RevokeUser(subject) => (Method::POST, "/admin/revoke-user", vec![("subject", subject.clone())]),
            Self::RevokeClient(id) => (Method::POST, "/admin/revoke-client", vec![("id", id.clone())]),
            Self::Registration(on) => (Method::POST, "/admin/registration", vec![("enabled", on.to_string())]),
        }
    }
}

/// Sends one request to the admin API at `base` (`http://127.0.0.1:9091`) and returns its JSON answer.
pub async fn send(base: &str, token: &str, request: &Request) -> Result<Value, CliError> {
    let (method, path, query) = request.parts();
    let builder = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    // `unix:/path`: every connection goes to that socket; the URL's host is then only a name.
    let (builder, base) = match base.strip_prefix("unix:") {
        #[cfg(unix)]
        Some(socket) => (builder.unix_socket(socket), "http://localhost"),
        _ => (builder, base),
    };
    let client = builder.build().map_err(|e| CliError::Unreachable(e.to_string()))?;
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let resp = client
        .request(method, &url)
        .query(&query)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| CliError::Unreachable(format!("{url}: {e}")))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body
            .get("error_description")
            .or_else(|| body.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("no details")
            .to_owned();
        return Err(CliError::Refused { status: status.as_u16(), message });
    }
    Ok(body)
}

/// The answer for people: a table for lists, one line for actions.
pub fn render(request: &Request, answer: &Value) -> String {
    match request {
        Request::Clients => table(
            &["CLIENT", "NAME", "REDIRECT HOSTS", "METADATA DOCUMENT", "CREATED", "LAST USED", "GRANTS"],
            rows(answer, "clients", |c| {
                vec![
                    text(c, "client_id"),
                    text(c, "name"),
                    c.get("redirect_hosts")
                        .and_then(Value::as_array)
                        .map(|hosts| hosts.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "-".to_owned()),
                    text(c, "metadata_document_url"),
                    time(c, "created"),
                    time(c, "last_used"),
                    text(c, "grants"),
                ]
            }),
        ),
        Request::Grants { .. } => table(
            &["GRANT", "SUBJECT", "USER", "CLIENT", "SCOPES", "CREATED", "LAST REFRESH", "IDP TOKEN EXPIRES"],
            rows(answer, "grants", |g| {
                let client = match text(g, "client_name").as_str() {
                    "-" => text(g, "client_id"),
                    name => format!("{name} ({})", text(g, "client_id")),
                };
                vec![
                    text(g, "id"),
                    text(g, "subject"),
                    text(g, "user_name"),
                    client,
                    text(g, "scopes"),
                    time(g, "created"),
                    time(g, "last_refresh"),
                    time(g, "idp_token_expires"),
                ]
            }),
        ),
        Request::RevokeGrant(_) | Request::RevokeUser(_) | Request::RevokeClient(_) => {
            format!("revoked {} grant(s)", text(answer, "revoked_grants"))
        }
        Request::Registration(_) => {
            let on = answer.get("enabled").and_then(Value::as_bool).unwrap_or(false);
            format!("registration is {}", if on { "on" } else { "off" })
        }
    }
}

fn rows(answer: &Value, key: &str, row: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    answer.get(key).and_then(Value::as_array).map(|items| items.iter().map(row).collect()).unwrap_or_default()
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

/// Unix seconds as RFC 3339 UTC; `-` when absent.
fn time(v: &Value, key: &str) -> String {
    match v.get(key).and_then(Value::as_u64) {
        Some(t) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)).to_string()
        }
        None => "-".to_owned(),
    }
}

/// Left-aligned columns, two spaces apart; control characters in cells are replaced, so that a client name
/// cannot move the terminal's cursor.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let clean = |s: &str| s.chars().map(|c| if c.is_control() { '?' } else { c }).collect::<String>();
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| clean(c)).collect()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count()))).collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(headers.to_vec())];
    out.extend(rows.iter().map(|r| line(r.iter().map(String::as_str).collect())));
    out.join("\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_table_aligns_columns_and_neutralises_control_characters() {
        let t = table(&["A", "NAME"], vec![vec!["long-id".into(), "x\u{1b}[2J".into()], vec!["b".into(), "y".into()]]);
        assert_eq!(t, "A        NAME\nlong-id  x?[2J\nb        y");
    }

    #[test]
    fn grants_render_times_and_never_more_than_the_answer_holds() {
        let answer = serde_json::json!({"grants": [{"id": "00ff", "subject": "alice", "user_name": null,
            "client_id": "c1", "client_name": "App", "scopes": "openid", "created": 0, "last_refresh": null,
            "idp_token_expires": null}]});
        let out = render(&Request::Grants { subject: None, client_id: None }, &answer);
        assert!(out.contains("App (c1)"), "{out}");
        assert!(out.contains("1970-01-01T00:00:00Z"), "{out}");
    }
}
