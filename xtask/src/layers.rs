//! `cargo xtask layers`: the module import graph of every crate of the
//! workspace, as a newcomer would draw it (one node per source file, an
//! edge for every `crate::`, `super::` or `self::` path that reaches into
//! another file), checked for cycles; and the agent's layering checked
//! against [`AGENT_LAYERS`]: a module imports only from its own layer or
//! the ones below.
//!
//! A path is followed through the module tree as far as it names modules;
//! the file of the last module reached is the edge's end. A path that goes
//! through a parent's re-export therefore points at the parent, which is
//! what a reader sees too. `mod` declarations themselves are not edges.
//! Comments, strings and char literals are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The crate roots checked, relative to the workspace.
const CRATE_ROOTS: &[&str] = &[
    "mesh-common/src/lib.rs",
    "mesh-ebpf/src/main.rs",
    "mesh-agent/core/src/lib.rs",
    "mesh-agent/src/lib.rs",
    "mesh-agent/src/main.rs",
    "mesh-agent/src/bin/meshctl.rs",
    "xtask/src/main.rs",
    "tests/src/lib.rs",
    "tests/src/bin/mesh-probe.rs",
];

/// The agent's layers, lowest first, by top-level module. The core (API
/// types, model, routes, policies, snapshot) is a crate of its own below
/// all of them, so the compiler already keeps it pure.
pub const AGENT_LAYERS: &[(&str, u8)] = &[
    // Helpers every room may use.
    ("sync", 0),
    ("memory", 0),
    // Where configuration comes from, the kernel side, and the L7 proxy.
    ("source", 1),
    ("dns", 1),
    ("workloads", 1),
    ("state", 1),
    ("k8s", 1),
    ("dataplane", 1),
    ("proxy", 1),
    // The reload loop that joins them, and the handover between agents.
    ("agent", 2),
    ("handover", 2),
    // What operators read.
    ("report", 3),
    ("admin", 3),
];

/// One source file: the module it defines and what it imports.
#[derive(Debug)]
struct FileNode {
    path: PathBuf,
    /// Module path from the crate root, e.g. `["proxy", "http1"]`.
    module: Vec<String>,
    /// The paths it writes, as [`Scanned::paths`].
    paths: Vec<(Vec<String>, Vec<String>)>,
}

/// A crate's module tree: every module (file or inline) by path, with the
/// file that holds it.
#[derive(Default)]
struct Tree {
    files: Vec<FileNode>,
    modules: BTreeMap<Vec<String>, usize>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Problem(pub String);

/// Checks every crate; returns the problems found (empty: all good).
pub fn check(workspace: &Path) -> Result<Vec<Problem>, String> {
    let mut problems = Vec::new();
    for root in CRATE_ROOTS {
        let root = workspace.join(root);
        let tree = load_tree(&root)?;
        let edges = edges(&tree);
        for cycle in cycles(&tree, &edges) {
            let names: Vec<String> = cycle.iter().map(|&i| relative(workspace, &tree.files[i].path)).collect();
            problems.push(Problem(format!("import cycle: {} -> {}", names.join(" -> "), names[0])));
        }
        if root.ends_with("mesh-agent/src/lib.rs") {
            problems.extend(layer_violations(workspace, &tree, &edges));
        }
    }
    Ok(problems)
}

fn relative(workspace: &Path, path: &Path) -> String {
    path.strip_prefix(workspace).unwrap_or(path).display().to_string()
}

fn load_tree(root: &Path) -> Result<Tree, String> {
    let mut tree = Tree::default();
    add_file(&mut tree, root, Vec::new(), true)?;
    Ok(tree)
}

/// Adds a file and, recursively, the files of the modules it declares.
/// `owns_dir`: the file's child modules live in its own directory (crate
/// roots and `mod.rs`), not in a directory named after it.
fn add_file(tree: &mut Tree, path: &Path, module: Vec<String>, owns_dir: bool) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let Scanned { declared, paths } = scan(&strip(&text));
    let index = tree.files.len();
    tree.files.push(FileNode { path: path.to_owned(), module: module.clone(), paths });
    tree.modules.insert(module.clone(), index);
    let dir = if owns_dir { path.parent().map(Path::to_owned).unwrap_or_default() } else { path.with_extension("") };
    let attributes = path_attributes(&text);
    for declared in declared {
        // `#[path = "..."]`, read for modules declared at the file's top level.
        let path_attribute =
            if declared.inline_path.is_empty() { attributes.get(&declared.name).cloned() } else { None };
        let mut child = module.clone();
        child.extend(declared.inline_path.iter().cloned());
        child.push(declared.name.clone());
        if declared.inline {
            tree.modules.insert(child, index);
            continue;
        }
        // Out-of-line modules inside inline ones live in subdirectories.
        let mut base = dir.clone();
        for segment in &declared.inline_path {
            base.push(segment);
        }
        let file = match &path_attribute {
            Some(attr) => path.parent().unwrap_or(Path::new(".")).join(attr),
            None => {
                let flat = base.join(format!("{}.rs", declared.name));
                if flat.exists() {
                    flat
                } else {
                    base.join(&declared.name).join("mod.rs")
                }
            }
        };
        let owns = file.file_name().is_some_and(|n| n == "mod.rs") || path_attribute.is_some();
        add_file(tree, &file, child, owns)?;
    }
    Ok(())
}

/// A `mod` item found in a file.
#[derive(Debug, PartialEq, Eq)]
struct Declared {
    name: String,
    /// The inline modules it sits in, within the file.
    inline_path: Vec<String>,
    /// `mod name { ... }` rather than `mod name;`.
    inline: bool,
}

/// The source with comments blanked out and string and char literals
/// emptied, so that neither can be mistaken for code. Lengths change; only
/// tokens matter here.
fn strip(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            i += end;
        } else if rest.starts_with("/*") {
            // Nested block comments.
            let mut depth = 0;
            let mut j = 0;
            while j < rest.len() {
                if rest[j..].starts_with("/*") {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with("*/") {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += rest[j..].chars().next().map_or(1, char::len_utf8);
                }
            }
            out.push(' ');
            i += j;
        } else if let Some(len) = raw_string_len(rest) {
            out.push_str("\"\"");
            i += len;
        } else if rest.starts_with('"') || rest.starts_with("b\"") {
            let start = usize::from(rest.starts_with('b'));
            let mut j = start + 1;
            while j < rest.len() {
                match rest.as_bytes()[j] {
                    b'\\' => j += 2,
                    b'"' => break,
                    _ => j += 1,
                }
            }
            out.push_str("\"\"");
            i += (j + 1).min(rest.len());
        } else if let Some(len) = char_literal_len(rest) {
            out.push_str("' '");
            i += len;
        } else {
            let c = rest.chars().next().expect("not empty");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// `r"..."`, `r#"..."#`, `br"..."` and the like: their whole length.
fn raw_string_len(rest: &str) -> Option<usize> {
    let after_b = rest.strip_prefix('b').unwrap_or(rest);
    let after_r = after_b.strip_prefix('r')?;
    let hashes = after_r.bytes().take_while(|b| *b == b'#').count();
    if after_r.as_bytes().get(hashes) != Some(&b'"') {
        return None;
    }
    let prefix = rest.len() - after_r.len() + hashes + 1;
    let closing = format!("\"{}", "#".repeat(hashes));
    let end = rest[prefix..].find(&closing)?;
    Some(prefix + end + closing.len())
}

/// A char or byte literal (`'a'`, `'\n'`, `b'x'`, `'\u{1F600}'`), but not
/// a lifetime (`'a`).
fn char_literal_len(rest: &str) -> Option<usize> {
    let body = rest.strip_prefix("b'").or_else(|| rest.strip_prefix('\''))?;
    let prefix = rest.len() - body.len();
    if let Some(escaped) = body.strip_prefix('\\') {
        // The escaped character may itself be a quote (`'\''`).
        let first = escaped.chars().next()?;
        let end = escaped[first.len_utf8()..].find('\'')? + first.len_utf8();
        return Some(prefix + 1 + end + 1);
    }
    let c = body.chars().next()?;
    (body[c.len_utf8()..].starts_with('\'')).then(|| prefix + c.len_utf8() + 1)
}

/// Identifier and punctuation tokens of stripped code.
fn tokens(code: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut i = 0;
    let bytes = code.as_bytes();
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_alphanumeric() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push(&code[start..i]);
        } else if code[i..].starts_with("::") {
            out.push("::");
            i += 2;
        } else if c.is_ascii_whitespace() || !c.is_ascii() {
            i += code[i..].chars().next().map_or(1, char::len_utf8);
        } else {
            out.push(&code[i..i + 1]);
            i += 1;
        }
    }
    out
}

/// The tokens without `#[cfg(test)]` items: test code may import what it
/// likes (as `cargo modules` leaves it out by default).
fn without_tests(tokens: Vec<&str>) -> Vec<&str> {
    const CFG_TEST: [&str; 7] = ["#", "[", "cfg", "(", "test", ")", "]"];
    let mut out = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i..].starts_with(&CFG_TEST) {
            i += CFG_TEST.len();
            // Further attributes of the same item.
            while tokens.get(i) == Some(&"#") && tokens.get(i + 1) == Some(&"[") {
                let mut depth = 0;
                while i < tokens.len() {
                    match tokens[i] {
                        "[" => depth += 1,
                        "]" => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
            // The item: up to its `;` (or `,`, for a field, variant or
            // arm), or through its braced body; never past the `}` of what
            // encloses it.
            let mut depth = 0usize;
            while i < tokens.len() {
                match tokens[i] {
                    "{" => depth += 1,
                    "}" if depth == 0 => break,
                    "}" => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    ";" | "," if depth == 0 => {
                        i += 1;
                        break;
                    }
                    _ => {}
                }
                i += 1;
            }
            continue;
        }
        out.push(tokens[i]);
        i += 1;
    }
    out
}

/// What a file declares and imports.
#[derive(Debug, Default)]
struct Scanned {
    /// Its `mod` items.
    declared: Vec<Declared>,
    /// Paths (`crate::…`, `super::…`, `self::…`, and relative ones such as
    /// a parent's `use child::X`, with `use` groups expanded), each with the
    /// inline module it is written in. Relative paths that name no child
    /// module (`std::…`, another crate's) lead nowhere when resolved.
    paths: Vec<(Vec<String>, Vec<String>)>,
}

/// One pass over a file's tokens, keeping track of the inline modules
/// (`mod name { … }`) each token sits in.
fn scan(code: &str) -> Scanned {
    let tokens = without_tests(tokens(code));
    let mut scanned = Scanned::default();
    // Inline modules open at these brace depths.
    let mut open: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let here = || open.iter().map(|(n, _)| n.clone()).collect::<Vec<String>>();
        match tokens[i] {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if open.last().is_some_and(|(_, at)| *at == depth) {
                    open.pop();
                }
            }
            "mod" if tokens.get(i + 1).is_some_and(|t| is_ident(t)) => {
                let name = tokens[i + 1].to_owned();
                let inline = tokens.get(i + 2) == Some(&"{");
                scanned.declared.push(Declared { name: name.clone(), inline_path: here(), inline });
                if inline {
                    open.push((name, depth));
                    depth += 1;
                    i += 3;
                    continue;
                }
            }
            // A visibility (`pub(in crate::proxy)`) names no import.
            "pub" if tokens.get(i + 1) == Some(&"(") => {
                i += tokens[i..].iter().position(|t| *t == ")").map_or(tokens.len() - i, |p| p + 1);
                continue;
            }
            // `use<'a>` in `impl Trait + use<'a>` captures, it imports nothing.
            "use" if tokens.get(i + 1) != Some(&"<") => {
                let end = tokens[i..].iter().position(|t| *t == ";").map_or(tokens.len(), |p| i + p);
                for path in expand_use(&tokens[i + 1..end]) {
                    scanned.paths.push((here(), path));
                }
                i = end + 1;
                continue;
            }
            // A path in code, as long as it goes (not the tail of another).
            token
                if is_ident(token)
                    && tokens.get(i + 1) == Some(&"::")
                    && tokens.get(i + 2).is_some_and(|t| is_ident(t))
                    && (i == 0 || tokens[i - 1] != "::") =>
            {
                let mut path = vec![tokens[i].to_owned()];
                let mut j = i + 1;
                while tokens.get(j) == Some(&"::") && tokens.get(j + 1).is_some_and(|t| is_ident(t)) {
                    path.push(tokens[j + 1].to_owned());
                    j += 2;
                }
                scanned.paths.push((here(), path));
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    scanned
}

/// `#[path = "..."]` attributes by the name of the module they precede
/// (read from the raw text: `strip` empties strings). The attribute may
/// share the `mod` line, or stand lines above it among other attributes.
fn path_attributes(text: &str) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut pending: Option<String> = None;
    for line in text.lines() {
        let mut rest = line.trim();
        if let Some(after) = rest.strip_prefix("#[path") {
            let quoted = after.trim_start().strip_prefix('=').map(str::trim_start).and_then(|a| a.strip_prefix('"'));
            if let Some((value, tail)) = quoted.and_then(|q| q.split_once('"')) {
                pending = Some(value.to_owned());
                rest = tail.trim_start().strip_prefix(']').unwrap_or(tail).trim();
            }
        }
        let Some(value) = pending.take() else { continue };
        if rest.is_empty() || rest.starts_with("#[") {
            pending = Some(value);
            continue;
        }
        let name = rest.split_whitespace().skip_while(|word| *word != "mod").nth(1);
        if let Some(name) = name {
            found.insert(name.trim_end_matches(';').to_owned(), value);
        }
    }
    found
}

fn is_ident(token: &str) -> bool {
    token.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
}

/// The paths a `use` tree names: `a::{b, c::{d, e as f}}` → `a::b`,
/// `a::c::d`, `a::c::e`.
fn expand_use(tokens: &[&str]) -> Vec<Vec<String>> {
    fn tree(tokens: &[&str], at: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        let mut path = prefix;
        loop {
            match tokens.get(*at) {
                Some(&"{") => {
                    *at += 1;
                    loop {
                        tree(tokens, at, path.clone(), out);
                        match tokens.get(*at) {
                            Some(&",") => *at += 1,
                            Some(&"}") => {
                                *at += 1;
                                return;
                            }
                            _ => return,
                        }
                        if tokens.get(*at) == Some(&"}") {
                            *at += 1;
                            return;
                        }
                    }
                }
                Some(&"::") => *at += 1,
                Some(&"*") => {
                    *at += 1;
                    out.push(path);
                    return;
                }
                Some(token) if is_ident(token) && *token != "as" => {
                    path.push((*token).to_owned());
                    *at += 1;
                }
                Some(&"as") => {
                    *at += 2;
                    out.push(path);
                    return;
                }
                _ => {
                    out.push(path);
                    return;
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut at = 0;
    // `pub use`, `pub(crate) use` reach here without the visibility.
    tree(tokens, &mut at, Vec::new(), &mut out);
    out
}

/// Edges between files (by index), deduplicated.
fn edges(tree: &Tree) -> BTreeSet<(usize, usize)> {
    let mut edges = BTreeSet::new();
    for (from, file) in tree.files.iter().enumerate() {
        for (inline, path) in &file.paths {
            let mut module = file.module.clone();
            module.extend(inline.iter().cloned());
            let mut segments = path.iter().peekable();
            let mut at: Vec<String> = match segments.peek().map(|s| s.as_str()) {
                Some("crate") => {
                    segments.next();
                    Vec::new()
                }
                _ => module.clone(),
            };
            while let Some(segment) = segments.peek() {
                match segment.as_str() {
                    "self" => {}
                    "super" => {
                        at.pop();
                    }
                    name => {
                        let mut child = at.clone();
                        child.push(name.to_owned());
                        if !tree.modules.contains_key(&child) {
                            break;
                        }
                        at = child;
                    }
                }
                segments.next();
            }
            if let Some(&to) = tree.modules.get(&at) {
                if to != from {
                    edges.insert((from, to));
                }
            }
        }
    }
    edges
}

/// Strongly connected components of more than one file, each as one
/// cycle through its files.
fn cycles(tree: &Tree, edges: &BTreeSet<(usize, usize)>) -> Vec<Vec<usize>> {
    let n = tree.files.len();
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(a, b) in edges {
        next[a].push(b);
    }
    // Tarjan's algorithm, iteratively.
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut counter = 0;
    let mut components = Vec::new();
    for start in 0..n {
        if index[start] != usize::MAX {
            continue;
        }
        let mut work = vec![(start, 0usize)];
        while let Some(&mut (v, ref mut child)) = work.last_mut() {
            if *child == 0 {
                index[v] = counter;
                low[v] = counter;
                counter += 1;
                stack.push(v);
                on_stack[v] = true;
            }
            if let Some(&w) = next[v].get(*child) {
                *child += 1;
                if index[w] == usize::MAX {
                    work.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            work.pop();
            if let Some(&(parent, _)) = work.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    components.push(component);
                }
            }
        }
    }
    components.into_iter().map(|component| cycle_through(&component, &next)).collect()
}

/// One cycle inside a strongly connected component: from its first file,
/// the shortest way back.
fn cycle_through(component: &[usize], next: &[Vec<usize>]) -> Vec<usize> {
    let members: BTreeSet<usize> = component.iter().copied().collect();
    let start = *component.iter().min().expect("not empty");
    let mut came_from: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for &w in &next[v] {
            if !members.contains(&w) {
                continue;
            }
            if w == start {
                let mut cycle = vec![v];
                let mut at = v;
                while at != start {
                    at = came_from[&at];
                    cycle.push(at);
                }
                cycle.reverse();
                return cycle;
            }
            if let std::collections::btree_map::Entry::Vacant(entry) = came_from.entry(w) {
                entry.insert(v);
                queue.push_back(w);
            }
        }
    }
    component.to_vec()
}

fn layer_of(module: &[String]) -> Option<u8> {
    let top = module.first()?;
    AGENT_LAYERS.iter().find(|(name, _)| name == top).map(|(_, layer)| *layer)
}

fn layer_violations(workspace: &Path, tree: &Tree, edges: &BTreeSet<(usize, usize)>) -> Vec<Problem> {
    let mut problems = Vec::new();
    for file in &tree.files {
        if file.module.len() == 1 && layer_of(&file.module).is_none() {
            problems.push(Problem(format!(
                "{}: module `{}` has no layer in xtask/src/layers.rs AGENT_LAYERS",
                relative(workspace, &file.path),
                file.module[0]
            )));
        }
    }
    for &(from, to) in edges {
        let (a, b) = (&tree.files[from], &tree.files[to]);
        if b.module.is_empty() {
            problems.push(Problem(format!(
                "{} imports from the crate root: give the name a module of its own",
                relative(workspace, &a.path)
            )));
            continue;
        }
        if let (Some(la), Some(lb)) = (layer_of(&a.module), layer_of(&b.module)) {
            if lb > la {
                problems.push(Problem(format!(
                    "{} (layer {la}) imports from {} (layer {lb}), a layer above it",
                    relative(workspace, &a.path),
                    relative(workspace, &b.path)
                )));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_groups_expand_into_paths() {
        let code = strip("use crate::{a::b, c::{d, e as f}, g::*};");
        let tokens = tokens(&code);
        let paths = expand_use(&tokens[1..tokens.len() - 1]);
        let shown: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
        assert_eq!(shown, ["crate::a::b", "crate::c::d", "crate::c::e", "crate::g"]);
    }

    #[test]
    fn comments_strings_and_lifetimes_are_not_code() {
        let code = strip("// use crate::x;\nlet s = \"crate::y\"; let r = r#\"super::z\"#; fn f<'a>(c: char) { c == '\"' }\n/* crate::w */ crate::v::f();");
        let found: Vec<String> = scan(&code).paths.into_iter().map(|(_, p)| p.join("::")).collect();
        assert_eq!(found, ["crate::v::f"]);
    }

    #[test]
    fn inline_modules_are_tracked() {
        let code = strip("mod a { mod b; use super::x::Y; }\nmod c;\nfn g() { super::q(); }");
        let Scanned { declared, paths: found } = scan(&code);
        assert_eq!(declared[0], Declared { name: "a".into(), inline_path: vec![], inline: true });
        assert_eq!(declared[1].inline_path, ["a"]);
        assert!(!declared[1].inline);
        assert_eq!(declared[2].name, "c");
        assert_eq!(found[0].0, ["a"], "written inside `a`");
        assert_eq!(found[1].0, Vec::<String>::new());
    }

    #[test]
    fn path_attributes_are_found_however_written() {
        let text = "#[path = \"a/x.rs\"]\nmod x;\n#[path=\"y.rs\"] pub mod y;\n#[path = \"z.rs\"]\n#[allow(dead_code)]\nmod z;\nmod w;\n";
        let found = path_attributes(text);
        let pairs: Vec<(&str, &str)> = found.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(pairs, [("x", "a/x.rs"), ("y", "y.rs"), ("z", "z.rs")]);
    }

    #[test]
    fn quotes_in_char_literals_and_visibilities_are_not_paths() {
        let code = strip(
            "fn f(c: char) -> bool { c == '\\'' || c == '\"' }\npub(in crate::proxy) mod mirror;\nuse crate::a::B;",
        );
        let found: Vec<String> = scan(&code).paths.into_iter().map(|(_, p)| p.join("::")).collect();
        assert_eq!(found, ["crate::a::B"]);
    }

    #[test]
    fn a_test_only_field_keeps_the_braces_around_it() {
        let code = strip("struct S {\n    #[cfg(test)]\n    hook: u8,\n    a: u8,\n}\nmod inner { use super::x::Y; }");
        let Scanned { declared, paths } = scan(&code);
        assert_eq!(declared[0].inline_path, Vec::<String>::new(), "`inner` is at the top, not inside `S`");
        assert_eq!(paths.last().unwrap().0, ["inner"]);
    }

    #[test]
    fn test_code_is_left_out() {
        let code = strip("#[cfg(test)]\n#[allow(unused)]\nmod tests { use crate::a::B; }\n#[cfg(test)]\nmod support;\nuse crate::c::D;");
        let Scanned { declared, paths } = scan(&code);
        let found: Vec<String> = paths.into_iter().map(|(_, p)| p.join("::")).collect();
        assert_eq!(found, ["crate::c::D"]);
        assert!(declared.is_empty());
    }

    /// A throwaway crate in a temporary directory.
    fn tree_of(name: &str, files: &[(&str, &str)]) -> (PathBuf, Tree) {
        let dir = std::env::temp_dir().join(format!("mesh-layers-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, text) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let tree = load_tree(&dir.join("lib.rs")).unwrap();
        (dir, tree)
    }

    #[test]
    fn a_parent_that_re_exports_a_child_which_uses_the_parent_is_a_cycle() {
        let files = [
            ("lib.rs", "mod room;\n"),
            ("room/mod.rs", "mod child;\npub use child::C;\npub struct P;\n"),
            ("room/child.rs", "use super::P;\npub struct C;\n"),
        ];
        let (dir, tree) = tree_of("reexport", &files);
        assert_eq!(cycles(&tree, &edges(&tree)).len(), 1);
        std::fs::write(dir.join("room/child.rs"), "pub struct C;\n").unwrap();
        let tree = load_tree(&dir.join("lib.rs")).unwrap();
        assert!(cycles(&tree, &edges(&tree)).is_empty(), "re-exporting alone is no cycle");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_agent_module_importing_from_a_higher_layer_is_reported() {
        let files = [
            ("lib.rs", "mod proxy;\nmod agent;\n"),
            ("proxy.rs", "fn f() { crate::agent::run(); }\n"),
            ("agent.rs", "pub fn run() {}\n"),
        ];
        let (dir, tree) = tree_of("layers", &files);
        let problems = layer_violations(&dir, &tree, &edges(&tree));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].0.contains("proxy.rs (layer 1) imports from agent.rs (layer 2)"), "{problems:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_two_file_cycle_is_found_and_a_chain_is_not() {
        let files = [
            ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
            ("a.rs", "use crate::b::B;\npub struct A;\n"),
            ("b.rs", "pub struct B;\nfn f() -> crate::a::A { todo!() }\n"),
            ("c.rs", "use crate::a::A;\n"),
        ];
        let (dir, tree) = tree_of("cycle", &files);
        let found = cycles(&tree, &edges(&tree));
        assert_eq!(found.len(), 1);
        let names: BTreeSet<&str> =
            found[0].iter().map(|&i| tree.files[i].path.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(names, BTreeSet::from(["a.rs", "b.rs"]));
        std::fs::write(dir.join("b.rs"), "pub struct B;\n").unwrap();
        let tree = load_tree(&dir.join("lib.rs")).unwrap();
        assert!(cycles(&tree, &edges(&tree)).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
