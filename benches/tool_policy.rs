//! The tool policy's cost on an allowed call: `cargo bench --bench tool_policy`.
//!
//! - `tool_policy_allowed_call`: parse a typical 2026-07-28 `tools/call` body (strict: duplicate keys refused),
//!   check `Mcp-Method` / `Mcp-Name` against it and decide it under three rules;
//! - `tool_policy_listing_filter`: narrow a 50-tool `tools/list` answer.
//!
//! The end-to-end difference through the running proxy is measured by the ignored test
//! `policy_cost_on_allowed_calls` in `tests/proxying/mcp_2026.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use dcr_proxy::tool_policy::{self, Pattern, Principal, ToolRule};

fn rules() -> Vec<ToolRule> {
    let rule = |m: &str, scopes: &[&str], groups: &[&str]| ToolRule {
        pattern: Pattern::parse(m).unwrap(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        groups: groups.iter().map(|s| (*s).to_owned()).collect(),
    };
    vec![rule("delete_*", &["User.Read"], &[]), rule("*_secret", &[], &["g-admins"]), rule("wipe", &["profile"], &[])]
}

fn bench(c: &mut Criterion) {
    let rules = rules();
    let groups = vec!["g-users".to_owned()];
    let who = Principal { scope: "openid profile email", groups: &groups, roles: &[], groups_overage: false };
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "search", "arguments": {"query": "quarterly report", "limit": 20},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1.0.0"},
                "io.modelcontextprotocol/clientCapabilities": {}}}
    })
    .to_string()
    .into_bytes();
    c.bench_function("tool_policy_allowed_call", |b| {
        b.iter(|| {
            let message = tool_policy::parse_message(&body).unwrap();
            tool_policy::check_headers(&[b"tools/call"], &[b"search"], &message).unwrap();
            assert_eq!(tool_policy::decide_message(&rules, &message, &who), tool_policy::Verdict::Allow);
        })
    });

    let tools: Vec<serde_json::Value> = (0..50)
        .map(|i| {
            serde_json::json!({"name": if i % 5 == 0 { format!("delete_{i}") } else { format!("tool_{i}") },
            "description": "a tool", "inputSchema": {"type": "object", "properties": {"q": {"type": "string"}}}})
        })
        .collect();
    let listing = serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}).to_string().into_bytes();
    let keep = |name: &str| tool_policy::may_call(&rules, name, &who);
    c.bench_function("tool_policy_listing_filter", |b| {
        b.iter(|| tool_policy::listing::filter_json_body(&listing, &keep).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
