//! The crate's layering, read from its source (issues "The house" and "The house, round two"):
//! - no file imports another that imports it back, directly or through others;
//! - no room does: each folder of `src/` and each top-level file is one room (`oauth`, `store`, `route`, …), so the
//!   rooms stack from `server` and `router` down to `config`, `crypto` and `http` with every arrow pointing down.
//!
//! A module is a file under `src/` (`mod.rs` stands for its folder). An import is a `crate::…`, `super::…` or
//! `self::…` path outside comments, in the code before the first `#[cfg(test)]` (the tests module); use-lists are
//! expanded at every depth (`super::{pkce, flow::{Ticket, SignIns}}` names `pkce` and `flow`), and `super` is
//! resolved against the module's own path. A module and its own ancestors are one unit (a folder's `mod.rs`
//! declares its children and its children use what it declares): that edge is containment, not an import.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Edges = BTreeMap<String, BTreeSet<String>>;

/// Module path (`endpoints::token`) → source without its tests and comments.
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

/// The paths of a use-tree starting at `text` (just after `crate::`), relative to its start: `a::b` → `["a::b"]`,
/// `{a, b::{c, self}}` → `["a", "b::c", "b"]`. Stops at the first character that cannot continue the tree.
fn use_tree(text: &str) -> Vec<String> {
    fn tree(s: &[u8], i: &mut usize, prefix: &[String], out: &mut Vec<String>) {
        let mut path = prefix.to_vec();
        loop {
            while *i < s.len() && s[*i].is_ascii_whitespace() {
                *i += 1;
            }
            if s.get(*i) == Some(&b'{') {
                *i += 1;
                loop {
                    while *i < s.len() && (s[*i].is_ascii_whitespace() || s[*i] == b',') {
                        *i += 1;
                    }
                    if *i >= s.len() || s[*i] == b'}' {
                        *i += 1;
                        return;
                    }
                    let before = *i;
                    tree(s, i, &path, out);
                    // Skip what the tree reader does not take (`as name`, `*`), up to the next item.
                    while *i < s.len() && s[*i] != b',' && s[*i] != b'}' {
                        *i += 1;
                    }
                    if *i == before {
                        *i += 1;
                    }
                }
            }
            let start = *i;
            while *i < s.len() && (s[*i].is_ascii_alphanumeric() || s[*i] == b'_') {
                *i += 1;
            }
            match std::str::from_utf8(&s[start..*i]).unwrap() {
                "" => break,
                "self" => {}
                ident => path.push(ident.to_owned()),
            }
            if s[*i..].starts_with(b"::") {
                *i += 2;
                continue;
            }
            break;
        }
        if !path.is_empty() {
            out.push(path.join("::"));
        }
    }
    let mut out = Vec::new();
    tree(text.as_bytes(), &mut 0, &[], &mut out);
    out
}

/// Every absolute path `code` (the source of module `name`) names with `crate::`, `super::` or `self::`.
fn named_paths(name: &str, code: &str) -> Vec<String> {
    let own: Vec<&str> = name.split("::").collect();
    let mut out = Vec::new();
    for (at, _) in code.match_indices("::") {
        // The keyword chain ending here: `crate`, `self`, or one or more `super`s.
        let head = &code[..at];
        let mut chain = Vec::new();
        let mut rest = head;
        loop {
            let word_start = rest.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |p| p + 1);
            let word = &rest[word_start..];
            match word {
                "crate" | "self" | "super" => chain.push(word),
                _ => break,
            }
            rest = &rest[..word_start];
            if word != "super" || !rest.ends_with("::") {
                break;
            }
            rest = &rest[..rest.len() - 2];
        }
        // Only the end of a chain starts a path, and only a chain not itself part of a longer path.
        let Some(first) = chain.last() else { continue };
        if rest.ends_with("::") || rest.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if code[at + 2..].starts_with("super::") {
            continue;
        }
        let base: Vec<&str> = match *first {
            "crate" => vec![],
            "self" => own.clone(),
            _ => own[..own.len().saturating_sub(chain.len())].to_vec(),
        };
        for path in use_tree(&code[at + 2..]) {
            let mut full: Vec<&str> = base.clone();
            full.extend(path.split("::"));
            out.push(full.join("::"));
        }
    }
    out
}

/// The longest prefix of `path` that names a module.
fn resolve<'a>(path: &str, modules: &'a BTreeMap<String, String>) -> Option<&'a str> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len()).rev().find_map(|n| modules.get_key_value(&parts[..n].join("::")).map(|(k, _)| k.as_str()))
}

/// Module → the modules it imports (its own ancestors and descendants left out).
fn edges(modules: &BTreeMap<String, String>) -> Edges {
    let mut edges = Edges::new();
    for (name, code) in modules {
        for target in named_paths(name, code) {
            let Some(to) = resolve(&target, modules) else { continue };
            if to == name || name.starts_with(&format!("{to}::")) || to.starts_with(&format!("{name}::")) {
                continue;
            }
            edges.entry(name.clone()).or_default().insert(to.to_owned());
        }
    }
    edges
}

/// The room of a module: its top-level folder or file.
fn room(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// Room → the rooms it imports.
fn room_edges(edges: &Edges) -> Edges {
    let mut rooms = Edges::new();
    for (from, tos) in edges {
        for to in tos {
            if room(from) != room(to) {
                rooms.entry(room(from).to_owned()).or_default().insert(room(to).to_owned());
            }
        }
    }
    rooms
}

/// A cycle through `start`, if any (depth-first search).
fn cycle_from(start: &str, edges: &Edges) -> Option<Vec<String>> {
    fn dfs(node: &str, start: &str, edges: &Edges, path: &mut Vec<String>, seen: &mut BTreeSet<String>) -> bool {
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

fn cycles(nodes: impl IntoIterator<Item = String>, edges: &Edges) -> Vec<Vec<String>> {
    nodes.into_iter().filter_map(|m| cycle_from(&m, edges)).collect()
}

/// Each room's floor: 0 for a room that imports none, else one more than the highest room it imports.
fn floors(rooms: &Edges, names: &BTreeSet<String>) -> BTreeMap<String, usize> {
    fn floor(r: &str, rooms: &Edges, memo: &mut BTreeMap<String, usize>) -> usize {
        if let Some(f) = memo.get(r) {
            return *f;
        }
        memo.insert(r.to_owned(), 0);
        let f = rooms.get(r).into_iter().flatten().map(|d| floor(d, rooms, memo) + 1).max().unwrap_or(0);
        memo.insert(r.to_owned(), f);
        f
    }
    let mut memo = BTreeMap::new();
    names.iter().map(|r| (r.clone(), floor(r, rooms, &mut memo))).collect()
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let modules = modules();
    assert!(modules.len() > 40, "the source tree was read ({} modules)", modules.len());
    let edges = edges(&modules);
    // The reader sees imports: a few edges every version of the crate has, one through a `super::` list.
    for (from, to) in [
        ("router", "endpoint"),
        ("error", "http::target"),
        ("endpoints::sign_in", "oauth::flow"),
        ("oauth::authorize", "oauth::pkce"),
    ] {
        assert!(edges.get(from).is_some_and(|e| e.contains(to)), "{from} → {to} not seen: {:?}", edges.get(from));
    }
    let found = cycles(modules.keys().cloned(), &edges);
    assert!(found.is_empty(), "import cycles between files: {found:?}");
}

#[test]
fn no_room_imports_one_that_imports_it_back() {
    let modules = modules();
    let rooms = room_edges(&edges(&modules));
    let names: BTreeSet<String> = modules.keys().map(|m| room(m).to_owned()).collect();
    assert!(names.len() > 15 && names.contains("oauth") && names.contains("store"), "rooms: {names:?}");
    let found = cycles(names.iter().cloned(), &rooms);
    assert!(found.is_empty(), "import cycles between rooms: {found:?}\nroom imports: {rooms:#?}");
    // The stack: the leaves import no other room, the connection layer stands on every other.
    let floors = floors(&rooms, &names);
    for leaf in ["clock", "crypto", "http", "jwk", "redirect_uri"] {
        assert_eq!(floors[leaf], 0, "{leaf} imports {:?}", rooms.get(leaf));
    }
    assert!(floors["config"] <= 1, "config imports {:?}", rooms.get("config"));
    let top = floors.values().max().copied().unwrap_or(0);
    assert_eq!(floors["server"], top, "floors: {floors:?}");
    assert!(floors["router"] > floors["endpoints"] && floors["endpoints"] > floors["app"], "floors: {floors:?}");
    assert!(floors["app"] > floors["proxy"] && floors["proxy"] > floors["store"], "floors: {floors:?}");
}

#[test]
fn use_lists_are_read_at_every_depth() {
    assert_eq!(use_tree("a::b::C;"), ["a::b::C"]);
    assert_eq!(use_tree("{a, b::{c, self}, d as e, f::*};"), ["a", "b::c", "b", "d", "f"]);
    assert_eq!(use_tree("{\n    x::{y::{Z,\n W}},\n};"), ["x::y::Z", "x::y::W"]);
    assert_eq!(named_paths("p::q::r", "use super::{s, t::u};"), ["p::q::s", "p::q::t::u"]);
    assert_eq!(named_paths("p::q::r", "f(super::super::v::w())"), ["p::v::w"]);
    assert_eq!(named_paths("p::q", "use self::r::S; crate::x::Y"), ["p::q::r::S", "x::Y"]);
    assert!(named_paths("p", "let my_crate::x = 1; other::super::y").is_empty());
}

#[test]
fn the_cycle_finder_finds_an_injected_super_list_cycle() {
    let mut modules = BTreeMap::new();
    modules.insert("oauth".to_owned(), String::new());
    modules.insert("oauth::token".to_owned(), "use super::{pkce, requests};".to_owned());
    modules.insert("oauth::requests".to_owned(), "fn f() { super::token::g() }".to_owned());
    modules.insert("oauth::pkce".to_owned(), String::new());
    let edges = edges(&modules);
    assert_eq!(cycle_from("oauth::token", &edges), Some(vec!["oauth::token".to_owned(), "oauth::requests".to_owned()]));
    assert_eq!(cycle_from("oauth::pkce", &edges), None);
}

#[test]
fn the_cycle_finder_finds_an_injected_folder_cycle() {
    // No two files import each other, yet the folders do: store → config → store.
    let mut modules = BTreeMap::new();
    modules.insert("store::redis".to_owned(), "use crate::config::RedisConfig;".to_owned());
    modules.insert("config::validate".to_owned(), "use crate::store::{model::Client};".to_owned());
    modules.insert("config".to_owned(), String::new());
    modules.insert("store".to_owned(), String::new());
    modules.insert("store::model".to_owned(), String::new());
    let edges = edges(&modules);
    assert!(cycles(modules.keys().cloned(), &edges).is_empty(), "file edges: {edges:?}");
    let rooms = room_edges(&edges);
    assert_eq!(cycle_from("store", &rooms), Some(vec!["store".to_owned(), "config".to_owned()]));
}
