//! The crate's layering, read from its source: no module imports another that imports it back, directly or through
//! others (issue "The house"). A module is a file under `src/` (`mod.rs` stands for its folder); an import is a
//! `crate::…` or `super::…` path outside comments, in the code before the first `#[cfg(test)]` (the tests module).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`oauth::token`) → source without its tests and comments.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if parts.last().map(String::as_str) == Some("mod") {
                parts.pop();
            }
            if parts == ["lib"] || parts == ["main"] {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let code: Vec<&str> = code.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
            out.insert(parts.join("::"), code.join("\n"));
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// The longest prefix of `path` that names a module.
fn resolve<'a>(path: &str, modules: &'a BTreeMap<String, String>) -> Option<&'a str> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len()).rev().find_map(|n| modules.get_key_value(&parts[..n].join("::")).map(|(k, _)| k.as_str()))
}

/// Paths named after `prefix` (`crate::` or `super::`), with `{a, b::c}` groups expanded one level.
fn paths_after(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let boundary = rest[..at].chars().next_back().is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        rest = &rest[at + prefix.len()..];
        if !boundary {
            continue;
        }
        let base: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_' || *c == ':').collect();
        let base = base.trim_end_matches(':').to_owned();
        let after = &rest[base.len()..];
        if let Some(group) = after.trim_start_matches(':').strip_prefix('{') {
            for item in group.split('}').next().unwrap_or_default().split(',') {
                let item = item.split_whitespace().next().unwrap_or_default();
                if !item.is_empty() && item != "self" {
                    out.push(format!("{base}::{item}"));
                }
            }
        }
        out.push(base);
    }
    out
}

fn edges(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, code) in modules {
        let parent = name.rsplit_once("::").map(|(p, _)| p.to_owned());
        let mut targets: Vec<String> = paths_after(code, "crate::");
        targets.extend(paths_after(code, "super::").into_iter().map(|p| match &parent {
            Some(parent) => format!("{parent}::{p}"),
            None => p,
        }));
        for target in targets {
            let Some(to) = resolve(&target, modules) else { continue };
            // A module and its own submodules are one unit.
            if to == name || name.starts_with(&format!("{to}::")) || to.starts_with(&format!("{name}::")) {
                continue;
            }
            edges.entry(name.clone()).or_default().insert(to.to_owned());
        }
    }
    edges
}

/// A cycle through `start`, if any (depth-first search).
fn cycle_from(start: &str, edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn dfs(
        node: &str,
        start: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in edges.get(node).into_iter().flatten() {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if dfs(next, start, edges, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![start.to_owned()];
    dfs(start, start, edges, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let modules = modules();
    assert!(modules.len() > 40, "the source tree was read ({} modules)", modules.len());
    let edges = edges(&modules);
    // The reader sees imports: a few edges every version of the crate has.
    for (from, to) in [("router", "route"), ("error", "proxy::target"), ("oauth::sign_in", "oauth::flow")] {
        assert!(edges.get(from).is_some_and(|e| e.contains(to)), "{from} → {to} not seen: {:?}", edges.get(from));
    }
    let cycles: Vec<Vec<String>> = modules.keys().filter_map(|m| cycle_from(m, &edges)).collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:?}");
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut modules = BTreeMap::new();
    modules.insert("a".to_owned(), "use crate::b::{x, c};".to_owned());
    modules.insert("b".to_owned(), "fn f() { super::a::g() }".to_owned());
    modules.insert("c".to_owned(), String::new());
    let edges = edges(&modules);
    assert_eq!(cycle_from("a", &edges), Some(vec!["a".to_owned(), "b".to_owned()]));
    assert_eq!(cycle_from("c", &edges), None);
}
