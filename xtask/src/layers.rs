//! `cargo xtask layers`: keeps `probe-user/src` layered. Each top folder is a layer, and a file
//! imports (through `crate::`, `super::` or `self::` paths) only from its own folder or from a
//! layer below its own: `config` → `model` → `probe` / `act` → `service` → `cmd`, with the few
//! loose files beside `main.rs` at the bottom and `main.rs` on top. `probe` and `act` are
//! side by side and import nothing from each other. No two files import each other, directly
//! or round a longer circle.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

/// The layers, lowest first; folders of the same rank may not import from each other.
const LAYERS: [(&str, u8); 6] = [
    ("config", 1),
    ("model", 2),
    ("probe", 3),
    ("act", 3),
    ("service", 4),
    ("cmd", 5),
];
/// Loose files beside `main.rs`: the bottom layer, kept to a handful.
const LOOSE_RANK: u8 = 0;
const MAX_LOOSE: usize = 3;

/// One source file as a module: its path in the crate (`["act", "failover"]` for
/// `act/failover/mod.rs`, empty for `main.rs`) and the module paths it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub path: Vec<String>,
    pub file: String,
    pub imports: Vec<Vec<String>>,
}

pub fn layers() -> Result<()> {
    let root = crate::cargo_cmd::workspace_root().join("probe-user/src");
    let modules = read_tree(&root)?;
    let report = check(&modules);
    for line in summary(&modules) {
        println!("layers: {line}");
    }
    if !report.is_empty() {
        for problem in &report {
            eprintln!("layers: {problem}");
        }
        bail!(
            "{} import(s) break the layers of probe-user/src (see above)",
            report.len()
        );
    }
    println!(
        "layers: {} modules, every import goes down, no cycle",
        modules.len()
    );
    Ok(())
}

/// Every `.rs` file under `root`, with its imports.
pub fn read_tree(root: &Path) -> Result<Vec<Module>> {
    let mut files = Vec::new();
    collect(root, &mut files)?;
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let rel = file.strip_prefix(root).unwrap_or(&file);
            let text =
                fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let path = module_path(rel);
            let imports = imports(&text, &path, rel.ends_with("mod.rs"));
            Ok(Module {
                path,
                file: rel.display().to_string(),
                imports,
            })
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `config/flags.rs` → `config::flags`; `act/failover/mod.rs` → `act::failover`; `main.rs` → the
/// crate root.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "main") {
        parts.pop();
    }
    parts
}

/// The module paths named in `text` by `crate::`, `super::` and `self::` paths (`use`
/// declarations, braces expanded, and paths inline in code), made absolute. Comments are
/// skipped.
pub fn imports(text: &str, here: &[String], is_mod_rs: bool) -> Vec<Vec<String>> {
    let code: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    // `self` inside a mod.rs is the folder's module; inside x.rs, x itself.
    let own: Vec<String> = here.to_vec();
    let parent: Vec<String> = if is_mod_rs || here.is_empty() {
        here[..here.len().saturating_sub(1)].to_vec()
    } else {
        here[..here.len() - 1].to_vec()
    };
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let rest = &code[i..];
        let starts_word = i == 0 || !is_ident(bytes[i - 1]);
        let prefix = [
            ("crate::", Vec::new()),
            ("super::", parent.clone()),
            ("self::", own.clone()),
        ]
        .into_iter()
        .find(|(p, _)| starts_word && rest.starts_with(p));
        match prefix {
            Some((p, base)) => {
                let (paths, used) = expand(&rest[p.len()..]);
                for path in paths {
                    let mut full = base.clone();
                    full.extend(path);
                    out.push(full);
                }
                i += p.len() + used.max(1);
            }
            None => i += rest.chars().next().map_or(1, char::len_utf8),
        }
    }
    out
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The paths a `use` tree or inline path starting at `s` names (after its `crate::`), and how
/// many bytes it took: `a::b` gives `[a, b]`; `{a::b, c::{d, e}}` gives `[a, b]`, `[c, d]`,
/// `[c, e]`.
fn expand(s: &str) -> (Vec<Vec<String>>, usize) {
    let mut segments = Vec::new();
    let mut i = 0;
    let b = s.as_bytes();
    loop {
        let start = i;
        while i < b.len() && is_ident(b[i]) {
            i += 1;
        }
        if i > start {
            segments.push(s[start..i].to_string());
        }
        if s[i..].starts_with("::{") {
            i += 2;
        } else if s[i..].starts_with("::") {
            i += 2;
            continue;
        }
        if i < b.len() && b[i] == b'{' {
            let close = matching(s, i);
            let mut out = Vec::new();
            for item in split_top(&s[i + 1..close]) {
                let item = item.trim();
                if item.is_empty() {
                    continue;
                }
                if item == "self" {
                    out.push(segments.clone());
                    continue;
                }
                let (inner, _) = expand(item);
                for path in inner {
                    let mut full = segments.clone();
                    full.extend(path);
                    out.push(full);
                }
            }
            return (out, close + 1);
        }
        return (vec![segments], i);
    }
}

/// The index of the `}` closing the `{` at `open`.
fn matching(s: &str, open: usize) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices().skip_while(|(i, _)| *i < open) {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    s.len().saturating_sub(1)
}

/// `a, b::{c, d}, e` split at its top-level commas.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// The module among `known` that `path` names: its longest known prefix.
fn resolve<'a>(path: &[String], known: &'a [Vec<String>]) -> Option<&'a Vec<String>> {
    known
        .iter()
        .filter(|m| !m.is_empty() && path.starts_with(m))
        .max_by_key(|m| m.len())
}

/// A module's layer: its top folder, or `loose` for a file beside `main.rs`, `main` for the
/// root.
fn layer(path: &[String], modules: &[Module]) -> &'static str {
    let Some(top) = path.first() else {
        return "main";
    };
    if let Some((name, _)) = LAYERS.iter().find(|(name, _)| name == top) {
        return name;
    }
    let is_folder = modules
        .iter()
        .any(|m| m.path.len() > 1 && m.path[0] == *top);
    if is_folder {
        "unknown"
    } else {
        "loose"
    }
}

fn rank(layer: &str) -> Option<u8> {
    match layer {
        "loose" => Some(LOOSE_RANK),
        "main" => Some(u8::MAX),
        _ => LAYERS.iter().find(|(n, _)| *n == layer).map(|(_, r)| *r),
    }
}

/// Every import that goes up or sideways, every folder that is not a layer, too many loose
/// files, and every circle of imports between files.
pub fn check(modules: &[Module]) -> Vec<String> {
    let known: Vec<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
    let mut problems = Vec::new();
    let loose: Vec<&Module> = modules
        .iter()
        .filter(|m| layer(&m.path, modules) == "loose")
        .collect();
    if loose.len() > MAX_LOOSE {
        let names: Vec<&str> = loose.iter().map(|m| m.file.as_str()).collect();
        problems.push(format!(
            "{} loose files beside main.rs ({}): at most {MAX_LOOSE}; put them in a layer",
            loose.len(),
            names.join(", ")
        ));
    }
    let mut edges: BTreeMap<&Vec<String>, BTreeSet<&Vec<String>>> = BTreeMap::new();
    for m in modules {
        let from = layer(&m.path, modules);
        if from == "unknown" {
            problems.push(format!(
                "{}: folder {} is not a layer (xtask/src/layers.rs lists them)",
                m.file, m.path[0]
            ));
            continue;
        }
        for import in &m.imports {
            let Some(target) = resolve(import, &known) else {
                continue;
            };
            if *target == m.path || m.path.starts_with(target) {
                // Itself, or an ancestor (a `mod.rs` above it): no edge.
                continue;
            }
            edges.entry(&m.path).or_default().insert(target);
            let to = layer(target, modules);
            let (Some(a), Some(b)) = (rank(from), rank(to)) else {
                continue;
            };
            if from != to && b >= a {
                let why = if a == b { "beside" } else { "above" };
                problems.push(format!(
                    "{}: imports {} ({to} is {why} {from})",
                    m.file,
                    target.join("::")
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        let names: Vec<String> = cycle.iter().map(|p| p.join("::")).collect();
        problems.push(format!("import cycle: {}", names.join(" -> ")));
    }
    problems
}

/// One circle in the import graph, if there is any (its first module repeated at the end).
fn find_cycle<'a>(
    edges: &BTreeMap<&'a Vec<String>, BTreeSet<&'a Vec<String>>>,
) -> Option<Vec<&'a Vec<String>>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit<'a>(
        node: &'a Vec<String>,
        edges: &BTreeMap<&'a Vec<String>, BTreeSet<&'a Vec<String>>>,
        marks: &mut BTreeMap<&'a Vec<String>, Mark>,
        stack: &mut Vec<&'a Vec<String>>,
    ) -> Option<Vec<&'a Vec<String>>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let at = stack.iter().position(|n| *n == node).unwrap_or(0);
                let mut cycle = stack[at..].to_vec();
                cycle.push(node);
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node, Mark::Open);
        stack.push(node);
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in edges.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(node, edges, &mut marks, &mut stack) {
            return Some(cycle);
        }
    }
    None
}

/// Which layers each layer imports from, lowest first.
fn summary(modules: &[Module]) -> Vec<String> {
    let known: Vec<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
    let mut uses: BTreeMap<(u8, &str), BTreeSet<&str>> = BTreeMap::new();
    for m in modules {
        let from = layer(&m.path, modules);
        let entry = uses.entry((rank(from).unwrap_or(0), from)).or_default();
        for import in &m.imports {
            if let Some(target) = resolve(import, &known) {
                let to = layer(target, modules);
                if to != from {
                    entry.insert(to);
                }
            }
        }
    }
    uses.into_iter()
        .map(|((_, from), to)| {
            let to: Vec<&str> = to.into_iter().collect();
            format!(
                "{from} uses {}",
                if to.is_empty() {
                    "nothing else".to_string()
                } else {
                    to.join(", ")
                }
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> Vec<String> {
        if s.is_empty() {
            return Vec::new();
        }
        s.split("::").map(str::to_string).collect()
    }

    fn module(p: &str, text: &str) -> Module {
        let file = if p.is_empty() {
            "main.rs".to_string()
        } else {
            format!("{}.rs", p.replace("::", "/"))
        };
        Module {
            path: path(p),
            imports: imports(text, &path(p), false),
            file,
        }
    }

    #[test]
    fn use_trees_and_inline_paths_are_expanded() {
        let text =
            "use crate::{\n    config::{flags::RunArgs, timing::Timing},\n    failure,\n};\n\
                    // use crate::cmd::nothing;\nfn f() { crate::model::health::State::Up; }\n\
                    use super::sibling::Thing;\nuse self::child;\n";
        let got = imports(text, &path("probe::prober"), false);
        assert_eq!(
            got,
            [
                path("config::flags::RunArgs"),
                path("config::timing::Timing"),
                path("failure"),
                path("model::health::State::Up"),
                path("probe::sibling::Thing"),
                path("probe::prober::child"),
            ]
        );
        // In a mod.rs, `super` is the folder's parent.
        let got = imports("use super::x;", &path("act::failover"), true);
        assert_eq!(got, [path("act::x")]);
        assert!(imports("fn not_a_crate::path() {}", &[], false).is_empty());
    }

    fn tree(extra: &[(&str, &str)]) -> Vec<Module> {
        let mut modules = vec![
            module("", "use crate::{cmd::check, service::daemon};"),
            module("failure", ""),
            module("config::settings", "use crate::failure::Failure;"),
            module("model::health", "use crate::config::settings::Timing;"),
            module("probe::prober", "use crate::model::health::Health;"),
            module("act::vip", ""),
            module(
                "service::daemon",
                "use crate::{act::vip::Vip, probe::prober};",
            ),
            module("cmd::check", "use crate::service::daemon;"),
        ];
        modules.extend(extra.iter().map(|(p, t)| module(p, t)));
        modules
    }

    #[test]
    fn imports_going_down_pass() {
        assert_eq!(check(&tree(&[])), Vec::<String>::new());
    }

    #[test]
    fn an_import_going_up_or_sideways_is_named() {
        let up = tree(&[("model::events", "use crate::cmd::check::plan;")]);
        assert_eq!(
            check(&up),
            ["model/events.rs: imports cmd::check (cmd is above model)"]
        );
        let sideways = tree(&[("probe::sender", "use crate::act::vip::Vip;")]);
        assert_eq!(
            check(&sideways),
            ["probe/sender.rs: imports act::vip (act is beside probe)"]
        );
    }

    #[test]
    fn a_cycle_inside_a_layer_is_found() {
        let modules = tree(&[
            ("service::a", "use crate::service::b::B;"),
            ("service::b", "use crate::service::a::A;"),
        ]);
        let problems = check(&modules);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("import cycle: service::a -> service::b -> service::a"),
            "{problems:?}"
        );
    }

    #[test]
    fn unknown_folders_and_too_many_loose_files_are_refused() {
        let modules = tree(&[("util::misc", ""), ("a", ""), ("b", ""), ("c", "")]);
        let problems = check(&modules);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("folder util is not a layer")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("4 loose files")),
            "{problems:?}"
        );
    }

    #[test]
    fn the_summary_lists_what_each_layer_uses() {
        let lines = summary(&tree(&[]));
        assert!(
            lines.contains(&"config uses loose".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"service uses act, probe".to_string()),
            "{lines:?}"
        );
    }
}
