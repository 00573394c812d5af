//! Narrowing `tools/list`, `prompts/list` and `resources/list` answers to what the user may call.
//!
//! - JSON answers: every JSON-RPC response in the body (one object, or a batch answer) whose `result` holds a
//!   `tools` / `prompts` (by `name`) or `resources` (by `uri`) array loses the entries the policy refuses.
//!   An entry without a string name is dropped (it cannot be judged).
//! - SSE answers ([`SseFilter`]): events are cut at blank lines (LF or CRLF line ends), the `data:` lines of an
//!   event are joined (WHATWG HTML §9.2.6) and, when they are such a response, written back as one `data:` line.
//!   Every other event passes byte for byte. An event longer than the limit ends the stream (the caller's error).

use serde_json::Value;

/// The listing methods and, for each, the `result` array and the field an entry is judged by.
pub const LISTS: [(&str, &str, &str); 4] = [
    ("tools/list", "tools", "name"),
    ("prompts/list", "prompts", "name"),
    ("resources/list", "resources", "uri"),
    ("resources/templates/list", "resourceTemplates", "uriTemplate"),
];

/// Removes from a JSON-RPC response (or batch of responses) the listed entries `keep` refuses; whether anything
/// changed.
pub fn filter_listing(message: &mut Value, keep: &dyn Fn(&str) -> bool) -> bool {
    match message {
        Value::Array(items) => items.iter_mut().fold(false, |changed, m| filter_listing(m, keep) | changed),
        Value::Object(obj) => {
            let Some(Value::Object(result)) = obj.get_mut("result") else { return false };
            let mut changed = false;
            for (_, array, field) in LISTS {
                if let Some(Value::Array(entries)) = result.get_mut(array) {
                    let before = entries.len();
                    entries.retain(|e| e.get(field).and_then(Value::as_str).is_some_and(keep));
                    changed |= entries.len() != before;
                }
            }
            changed
        }
        _ => false,
    }
}

/// A JSON body narrowed by [`filter_listing`]; `None` when it is not JSON or nothing changed.
pub fn filter_json_body(body: &[u8], keep: &dyn Fn(&str) -> bool) -> Option<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    filter_listing(&mut value, keep).then(|| value.to_string().into_bytes())
}

/// An SSE event longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an event of the listing stream is longer than {0} bytes")]
pub struct EventTooLarge(pub usize);

/// Rewrites listing responses in an SSE stream, event by event.
#[derive(Debug)]
pub struct SseFilter {
    /// Bytes of the event being received (whole lines and a partial last line).
    pending: Vec<u8>,
    limit: usize,
}

impl SseFilter {
    pub fn new(limit: usize) -> Self {
        Self { pending: Vec::new(), limit }
    }

    /// Takes a chunk; returns the bytes of the events it completed, rewritten where needed.
    pub fn push(&mut self, chunk: &[u8], keep: &dyn Fn(&str) -> bool) -> Result<Vec<u8>, EventTooLarge> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = event_end(&self.pending) {
            let event: Vec<u8> = self.pending.drain(..end).collect();
            out.extend_from_slice(&rewrite_event(&event, keep));
        }
        if self.pending.len() > self.limit {
            return Err(EventTooLarge(self.limit));
        }
        Ok(out)
    }

    /// The end of the stream: what remains (an unterminated event) passes as it is.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

/// The length of the first complete event (up to and including its blank line), if any.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            let line = &buf[line_start..i];
            if line.is_empty() || line == b"\r" {
                return Some(i + 1);
            }
            line_start = i + 1;
        }
    }
    None
}

fn rewrite_event(event: &[u8], keep: &dyn Fn(&str) -> bool) -> Vec<u8> {
    let Ok(text) = std::str::from_utf8(event) else { return event.to_vec() };
    let lines: Vec<&str> = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).collect();
    let data: Vec<&str> =
        lines.iter().filter_map(|l| l.strip_prefix("data:").map(|d| d.strip_prefix(' ').unwrap_or(d))).collect();
    if data.is_empty() {
        return event.to_vec();
    }
    let Some(json) = filter_json_body(data.join("\n").as_bytes(), keep) else { return event.to_vec() };
    let mut out = String::with_capacity(event.len());
    let mut wrote_data = false;
    for line in lines.iter().filter(|l| !l.is_empty()) {
        if line.starts_with("data:") {
            if !wrote_data {
                out.push_str("data: ");
                out.push_str(&String::from_utf8_lossy(&json));
                out.push('\n');
                wrote_data = true;
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push('\n');
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keep(name: &str) -> bool {
        !name.starts_with("delete_")
    }

    #[test]
    fn json_listings_lose_refused_entries() {
        let mut v = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [
            {"name": "search"}, {"name": "delete_user"}, {"title": "nameless"}
        ], "nextCursor": "c"}});
        assert!(filter_listing(&mut v, &keep));
        assert_eq!(v["result"]["tools"], json!([{"name": "search"}]));
        assert_eq!(v["result"]["nextCursor"], "c");
        let mut batch = json!([{"id": 1, "result": {"resources": [{"uri": "delete_me"}, {"uri": "ok"}]}}]);
        assert!(filter_listing(&mut batch, &keep));
        assert_eq!(batch[0]["result"]["resources"], json!([{"uri": "ok"}]));
        let mut other = json!({"id": 1, "result": {"content": []}});
        assert!(!filter_listing(&mut other, &keep));
    }

    #[test]
    fn resource_template_listings_are_narrowed_too() {
        let mut v = json!({"jsonrpc": "2.0", "id": 1, "result": {"resourceTemplates": [
            {"uriTemplate": "file:///public/{name}"}, {"uriTemplate": "file:///db_secret/{name}"}
        ]}});
        assert!(filter_listing(&mut v, &|n: &str| !n.contains("secret")));
        assert_eq!(v["result"]["resourceTemplates"], json!([{"uriTemplate": "file:///public/{name}"}]));
    }

    #[test]
    fn sse_events_are_rewritten_across_chunk_boundaries() {
        let listing =
            json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "search"}, {"name": "delete_x"}]}});
        let stream = format!(
            ": keep-alive\n\nevent: message\r\nid: 7\r\ndata: {}\r\n\r\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}}\n\n",
            listing
        );
        for split in [1, 5, 40, stream.len() - 1] {
            let mut f = SseFilter::new(1 << 20);
            let (a, b) = stream.as_bytes().split_at(split);
            let mut out = f.push(a, &keep).unwrap_or_default();
            out.extend(f.push(b, &keep).unwrap_or_default());
            out.extend(f.finish());
            let text = String::from_utf8_lossy(&out);
            assert!(text.starts_with(": keep-alive\n\nevent: message\nid: 7\ndata: {"), "{text}");
            assert!(text.contains("search") && !text.contains("delete_x"), "{text}");
            assert!(text.ends_with("data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n"), "{text}");
        }
    }

    #[test]
    fn an_endless_event_is_cut_at_the_limit() {
        let mut f = SseFilter::new(64);
        assert!(f.push(b"data: {", &keep).is_ok());
        assert_eq!(f.push(&[b'x'; 100], &keep), Err(EventTooLarge(64)));
    }
}
