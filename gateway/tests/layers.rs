//! The gateway's structure, checked from its source. Layering: `gateway/src` is laid out by
//! layer, lowest first in [`LAYERS`], and every `crate::` path in a layer's code points to its own layer or
//! one below it. Within the crate, the modules (`layer::module`) import each other without a
//! cycle. ARCHITECTURE.md's code map describes the same order.
//!
//! Only `crate::` paths count (in `use` lines and inline); comments and unit tests (`#[cfg(test)]
//! mod tests` at the end of a file) do not. Unit tests in a file of their own follow the layers
//! like any code (tests that build the whole gateway live in `app/`). A module's own
//! submodules (reached with `self::`/`super::` or by path) are one unit with it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first: each may use the ones before it.
const LAYERS: &[&str] = &[
    "base",
    "obs",
    "pgwire",
    "compute",
    "auth",
    "control_plane",
    "proxy",
    "frontend",
    "app",
];

/// The longest a function of the gateway may be, from its signature to its closing brace
/// (unit tests aside): small, named parts.
const MAX_FUNCTION_LINES: usize = 80;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read gateway/src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a source file: `frontend/session/mod.rs` → `["frontend", "session"]`.
fn module_of(file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src_dir()).expect("under src");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    match last.as_str() {
        "mod.rs" | "lib.rs" | "main.rs" => {}
        name => parts.push(name.trim_end_matches(".rs").to_owned()),
    }
    parts
}

/// A module as the check sees it: its layer and the module directly under it. `path` is cut
/// to its longest prefix that is a module (the rest names an item).
fn node(path: &[String], modules: &BTreeSet<Vec<String>>) -> String {
    let module = (0..=path.len())
        .rev()
        .map(|n| &path[..n])
        .find(|prefix| modules.contains(*prefix))
        .unwrap_or(&[]);
    module
        .iter()
        .take(2)
        .cloned()
        .collect::<Vec<_>>()
        .join("::")
}

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

/// The code of a file without its comments (line comments, doc comments and block comments).
fn without_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => {
                    if let Some(next) = chars.next() {
                        out.push(next);
                    }
                }
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match (c, chars.peek()) {
            ('/', Some('/')) => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut previous = ' ';
                for c in chars.by_ref() {
                    if previous == '*' && c == '/' {
                        break;
                    }
                    previous = c;
                }
            }
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// A file without its unit tests (`#[cfg(test)] mod …` to the end of the file, where they
/// live by convention): a test may build the whole gateway to exercise one module.
fn without_unit_tests(source: &str) -> &str {
    match source.find("#[cfg(test)]\nmod ") {
        Some(at) => &source[..at],
        None => source,
    }
}

/// Every path a piece of code names under `crate::`, with `{a, b::{c}}` groups expanded.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let boundary = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        rest = &rest[at + "crate::".len()..];
        if boundary {
            expand(rest, Vec::new(), &mut paths);
        }
    }
    paths
}

/// Reads one use-tree from `text` (after `prefix::`) into `out`; returns the bytes it used.
fn expand(text: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    let mut at = 0;
    loop {
        let rest = &text[at..];
        let trimmed = rest.trim_start();
        at += rest.len() - trimmed.len();
        if let Some(group) = trimmed.strip_prefix('{') {
            at += 1;
            let mut inner = 0;
            loop {
                inner += expand(&group[inner..], path.clone(), out);
                let after = group[inner..].trim_start();
                inner = group.len() - after.len();
                if let Some(next) = after.strip_prefix(',') {
                    inner = group.len() - next.len();
                    if next.trim_start().starts_with('}') {
                        inner = group.len() - next.trim_start().len() + 1;
                        break;
                    }
                } else {
                    inner += usize::from(after.starts_with('}'));
                    break;
                }
            }
            return at + inner;
        }
        let ident: String = trimmed
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            out.push(path);
            return at;
        }
        at += ident.len();
        path.push(ident);
        if text[at..].starts_with("::") {
            at += 2;
        } else {
            out.push(path);
            return at;
        }
    }
}

struct Graph {
    /// node → nodes it uses, with one file and path as evidence for each edge.
    edges: BTreeMap<String, BTreeMap<String, String>>,
}

fn graph() -> Graph {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(f)).collect();
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in files {
        let from_node = node(&module_of(&file), &modules);
        let source = std::fs::read_to_string(&file).expect("read a source file");
        let code = without_comments(without_unit_tests(&source));
        let entry = edges.entry(from_node.clone()).or_default();
        for path in crate_paths(&code) {
            let to_node = node(&path, &modules);
            let related = from_node == to_node
                || to_node.is_empty()
                || from_node.starts_with(&format!("{to_node}::"))
                || to_node.starts_with(&format!("{from_node}::"));
            if !related {
                let evidence = format!(
                    "{} uses crate::{}",
                    file.strip_prefix(src_dir()).expect("under src").display(),
                    path.join("::")
                );
                entry.entry(to_node).or_insert(evidence);
            }
        }
    }
    Graph { edges }
}

fn layer_of(node: &str) -> &str {
    node.split("::").next().unwrap_or(node)
}

#[test]
fn every_file_is_in_a_layer() {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let stray: Vec<_> = files
        .iter()
        .map(|f| module_of(f))
        .filter(|m| !m.is_empty() && rank(&m[0]).is_none())
        .map(|m| m.join("::"))
        .collect();
    assert!(
        stray.is_empty(),
        "modules outside the layers {LAYERS:?}: {stray:?}"
    );
}

#[test]
fn imports_point_down() {
    let graph = graph();
    let mut upward = Vec::new();
    for (from, targets) in &graph.edges {
        let Some(from_rank) = rank(layer_of(from)) else {
            continue; // lib.rs and main.rs sit above every layer
        };
        for (to, evidence) in targets {
            match rank(layer_of(to)) {
                Some(to_rank) if to_rank <= from_rank => {}
                _ => upward.push(format!("{from} -> {to}: {evidence}")),
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up a layer:\n  {}",
        upward.join("\n  ")
    );
}

#[test]
fn modules_import_each_other_without_a_cycle() {
    let graph = graph();
    let nodes: BTreeSet<&String> = graph
        .edges
        .keys()
        .chain(graph.edges.values().flat_map(|t| t.keys()))
        .collect();
    // Depth-first search; a back edge closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut marks: BTreeMap<&String, Mark> = nodes.iter().map(|n| (*n, Mark::New)).collect();
    let mut cycles = Vec::new();
    fn visit<'a>(
        node: &'a String,
        graph: &'a Graph,
        marks: &mut BTreeMap<&'a String, Mark>,
        stack: &mut Vec<&'a String>,
        cycles: &mut Vec<String>,
    ) {
        marks.insert(node, Mark::Open);
        stack.push(node);
        for (next, evidence) in graph.edges.get(node).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::New => visit(next, graph, marks, stack, cycles),
                Mark::Open => {
                    let start = stack.iter().position(|n| *n == next).unwrap_or(0);
                    let ring: Vec<_> = stack[start..].iter().map(|n| n.as_str()).collect();
                    cycles.push(format!("{} -> {next} ({evidence})", ring.join(" -> ")));
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(node, Mark::Done);
    }
    for node in &nodes {
        if marks[node] == Mark::New {
            visit(node, &graph, &mut marks, &mut Vec::new(), &mut cycles);
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles between modules:\n  {}",
        cycles.join("\n  ")
    );
}

#[test]
fn the_path_reader_expands_groups() {
    let paths = crate_paths(
        "use crate::a::{b::{C, D}, e};\nfn f() { crate::x::y(); notcrate::z; }\nuse crate::{p, q::R};",
    );
    let joined: Vec<_> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        joined,
        ["a::b::C", "a::b::D", "a::e", "x::y", "p", "q::R"],
        "{paths:?}"
    );
    assert_eq!(
        without_comments("a // crate::x\n/* crate::y */ b \"//\" c"),
        "a \n b \"//\" c"
    );
}

/// The name of the function a line starts, if it starts one.
fn function_name(line: &str) -> Option<&str> {
    let mut rest = line.trim_start();
    for prefix in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "async ",
        "unsafe ",
    ] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    let rest = rest.strip_prefix("fn ")?;
    let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
    Some(&rest[..end])
}

/// How `{` and `}` change the nesting over one line of code, string and char literals aside.
fn brace_delta(line: &str) -> (i64, bool) {
    let (mut delta, mut opened) = (0, false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '\'' => {
                // A char literal ('x', '\n', '{'); a lifetime has no closing quote.
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with('\\') {
                    chars.by_ref().take_while(|c| *c != '\'').for_each(drop);
                } else if rest.chars().nth(1) == Some('\'') {
                    chars.nth(1);
                }
            }
            '{' => {
                delta += 1;
                opened = true;
            }
            '}' => delta -= 1,
            _ => {}
        }
    }
    (delta, opened)
}

/// Functions in `code` longer than `max` lines: (name, first line, length).
fn long_functions(code: &str, max: usize) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut long = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(name) = function_name(line) else {
            continue;
        };
        let (mut depth, mut opened) = (0i64, false);
        for (end, line) in lines.iter().enumerate().skip(start) {
            let (delta, opens) = brace_delta(line);
            depth += delta;
            opened |= opens;
            if !opened && line.trim_end().ends_with(';') {
                break; // a declaration without a body
            }
            if opened && depth <= 0 {
                if end - start + 1 > max {
                    long.push((name.to_owned(), start + 1, end - start + 1));
                }
                break;
            }
        }
    }
    long
}

#[test]
fn functions_are_short() {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let mut long = Vec::new();
    for file in files {
        if file.to_string_lossy().ends_with("tests.rs") {
            continue; // unit tests in a file of their own (`session_tests.rs`)
        }
        let source = std::fs::read_to_string(&file).expect("read a source file");
        for (name, line, length) in long_functions(without_unit_tests(&source), MAX_FUNCTION_LINES)
        {
            let path = file.strip_prefix(src_dir()).expect("under src").display();
            long.push(format!("{path}:{line} {name}: {length} lines"));
        }
    }
    assert!(
        long.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines (split them into named parts):\n  {}",
        long.join("\n  ")
    );
}

#[test]
fn the_function_reader_counts_bodies_not_braces_in_literals() {
    let code = "pub async fn a() {\n    let s = \"}}}\";\n    let c = '{';\n}\nfn b<'x>(v: &'x str) -> &'x str {\n    v\n}\nfn decl();\n";
    assert_eq!(
        long_functions(code, 2),
        [("a".to_owned(), 1, 4), ("b".to_owned(), 5, 3)]
    );
    assert!(long_functions(code, 4).is_empty());
}
