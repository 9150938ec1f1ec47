//! The layout rules of ARCHITECTURE.md, checked on the source: no import
//! circle between the modules of `mandrake-storage` or `mandrake-cli`, the
//! error type imports nothing of its crate, the handle (`db/`) never names
//! the embedded cluster, and the runtime carries no tooling dependency.
//!
//! A module's imports are the `crate::…` and `super::…` paths in its file
//! (its `#[cfg(test)]` module left out), each resolved to the longest module
//! path it starts with; declaring a child module (`mod x;`) is no import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every module of the crate whose sources are in `src`, by path (`db::pool`),
/// with its source text up to its test module. The crate root is left out:
/// it declares and re-exports, it imports nothing.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut folders = vec![src.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts
                .last()
                .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
            {
                parts.pop();
            }
            if parts.is_empty() {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text
                .find("#[cfg(test)]\nmod ")
                .map_or(text.as_str(), |end| &text[..end]);
            let code: String = code
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            found.insert(parts.join("::"), code);
        }
    }
    found
}

/// The identifier segments after each `prefix` in `code` (`crate::db::pool::X`
/// gives `["db", "pool", "X"]`; `super::{a, b}` gives `[]`).
fn paths_after<'c>(code: &'c str, prefix: &str) -> Vec<Vec<&'c str>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let mut segments = Vec::new();
        let mut tail = rest;
        loop {
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if end == 0 {
                break;
            }
            segments.push(&tail[..end]);
            match tail[end..].strip_prefix("::") {
                Some(next) => tail = next,
                None => break,
            }
        }
        paths.push(segments);
    }
    paths
}

/// The modules each module imports.
fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let resolve = |base: Vec<&str>, segments: &[&str]| -> Option<String> {
        (0..=segments.len()).rev().find_map(|k| {
            let mut path = base.clone();
            path.extend_from_slice(&segments[..k]);
            let name = path.join("::");
            modules.contains_key(&name).then_some(name)
        })
    };
    modules
        .iter()
        .map(|(name, code)| {
            let here: Vec<&str> = name.split("::").collect();
            let parent = here[..here.len() - 1].to_vec();
            let mut deps: BTreeSet<String> = paths_after(code, "crate::")
                .iter()
                .filter_map(|segments| resolve(Vec::new(), segments))
                .collect();
            deps.extend(
                paths_after(code, "super::")
                    .iter()
                    .filter_map(|segments| resolve(parent.clone(), segments)),
            );
            deps.remove(name);
            (name.clone(), deps)
        })
        .collect()
}

/// An import circle, if there is one: the modules along it.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| n == node) {
            let mut found = path[start..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, done, path) {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

fn assert_no_circle(krate: &str) {
    let graph = imports(&modules(&workspace().join(krate).join("src")));
    assert!(graph.len() > 3, "{krate}: read {} modules", graph.len());
    if let Some(found) = circle(&graph) {
        panic!("{krate}: import circle {}", found.join(" -> "));
    }
}

#[test]
fn no_import_circle_in_mandrake_storage() {
    assert_no_circle("mandrake-storage");
}

#[test]
fn no_import_circle_in_mandrake_cli() {
    assert_no_circle("mandrake-cli");
}

#[test]
fn the_checker_finds_a_circle() {
    let sources = BTreeMap::from([
        ("a".to_owned(), "use crate::b::Thing;".to_owned()),
        ("b".to_owned(), "fn f() { crate::a::g() }".to_owned()),
        ("b::c".to_owned(), "use super::{Thing};".to_owned()),
        (
            "d".to_owned(),
            "fn f() -> crate::b::c::X { todo!() }".to_owned(),
        ),
    ]);
    let graph = imports(&sources);
    assert_eq!(graph["b::c"], BTreeSet::from(["b".to_owned()]));
    assert_eq!(graph["d"], BTreeSet::from(["b::c".to_owned()]));
    let found = circle(&graph).expect("a -> b -> a");
    assert_eq!(found, ["a", "b", "a"]);
}

#[test]
fn the_error_type_imports_nothing_of_its_crate() {
    let storage = modules(&workspace().join("mandrake-storage/src"));
    assert_eq!(imports(&storage)["error"], BTreeSet::new());
}

#[test]
fn the_handle_never_names_the_embedded_cluster() {
    let storage = modules(&workspace().join("mandrake-storage/src"));
    let graph = imports(&storage);
    for (name, code) in &storage {
        if name == "db" || name.starts_with("db::") {
            assert!(
                !graph[name].contains("cluster"),
                "{name} imports the cluster"
            );
            assert!(!code.contains("Cluster"), "{name} names the Cluster type");
        }
    }
}

#[test]
fn the_runtime_carries_no_tooling_dependency() {
    let manifest =
        std::fs::read_to_string(workspace().join("mandrake-storage/Cargo.toml")).unwrap();
    for tool in ["clap", "squawk"] {
        assert!(
            !manifest.contains(tool),
            "mandrake-storage depends on {tool}"
        );
    }
}
