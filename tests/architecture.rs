//! The house holds: the modules of `src/` form layers with no import cycle, every module has a
//! layer, imports only go down (or stay in their layer), tiers never import each other, and no
//! file grows past ~600 lines without a stated reason.
//!
//! The module graph is read from the source text: every `crate::…` / `isobench::…` / `super::…`
//! path (grouped `use a::{b, c::D}` included) is resolved to the longest module that exists as a
//! file, then collapsed to a node: the first path segment, or the first two inside the folders
//! that hold layers of their own (`model`, `host`, `state`, `measure`, `backend`, `commands`).
//! Unit-test modules (from the first `#[cfg(test)]` of a file, or a `tests.rs` of their own)
//! are not part of the architecture and are not read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Folders whose children are nodes of their own.
const FOLDERS: &[&str] = &["model", "host", "state", "measure", "backend", "commands"];

/// The layers, lowest first. A node may import nodes of its own layer or below.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "leaf: vocabulary and std-only utilities",
        &[
            "protocol",
            "workload",
            "agent",
            "stats",
            "exit_codes",
            "netpeer",
            "host::fs",
            "host::proc",
        ],
    ),
    (
        "model: pure data (tiers, budget, availability, host facts, scenario + compare spec, results)",
        &[
            "model",
            "model::tier",
            "model::budget",
            "model::availability",
            "model::facts",
            "model::scenario",
            "model::results",
        ],
    ),
    (
        "ledger and user output (tables, progress, warnings)",
        &["state", "state::ledger", "output"],
    ),
    (
        "host utilities",
        &[
            "host",
            "host::facts",
            "host::cgroup",
            "host::rootfs",
            "host::net",
        ],
    ),
    (
        "backends",
        &[
            "backend",
            "backend::resources",
            "backend::child",
            "backend::process",
            // The one launch timer: every tier implements its `Launch` steps, so it sits with
            // the backends although it lives in measure/ (HOUSE: measure/launch.rs).
            "measure::launch",
            "backend::launch",
            // ...and every tier module the registry declares (see `tiers()`).
            "backend::registry",
        ],
    ),
    ("cleanup (validates every ledger entry)", &["state::cleanup"]),
    (
        "measurement",
        &[
            "measure",
            "measure::plan",
            "measure::runner",
            "measure::density",
            "measure::apps",
            "ab",
        ],
    ),
    (
        "outputs (read results only)",
        &["compare", "history", "report", "outdir", "interrupt"],
    ),
    (
        "edge: CLI types and commands",
        &[
            "cli",
            "config",
            "commands",
            "commands::run",
            "commands::ab",
            "commands::compare",
            "commands::history",
            "commands::report",
            "commands::doctor",
            "commands::cleanup",
            "commands::fetch_kernel",
            "commands::options",
            "root",
            "main",
        ],
    ),
];

/// Tiers import shared helpers (`backend`, `backend::resources`, `backend::child`,
/// `backend::process`, `backend::launch`, `host::*`), never each other. Known exceptions
/// (none left: keep it that way):
const TIER_EXCEPTIONS: &[(&str, &str, &str)] = &[];

/// The layer of the tiers' modules.
const TIER_LAYER: &str = "backends";

/// The tiers' modules, read from where they are declared: `#[path = ...]` + `mod NAME;` in
/// `src/backend/registry.rs`, beside their rows. So a new tier needs no edit here.
fn tiers() -> Vec<String> {
    let text = std::fs::read_to_string(src().join("backend/registry.rs")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut out = vec![];
    for w in lines.windows(2) {
        let (first, last) = (w[0], w[1]);
        if !first.starts_with("#[path = ") {
            continue;
        }
        let name = last
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub ")
            .strip_prefix("mod ")
            .and_then(|r| r.strip_suffix(';'));
        if let Some(name) = name {
            out.push(format!("backend::{name}"));
        }
    }
    out.sort();
    out.dedup();
    assert!(
        out.len() >= 5,
        "expected the tier modules declared in src/backend/registry.rs, found {out:?}"
    );
    out
}

/// Files allowed past the line limit, with the reason.
const LONG_FILES: &[(&str, &str)] = &[
    ("src/backend/process/mod.rs", "the one way sandbox processes are created (CLONE_VM clone, the child's numbered setup steps, pidfd wait) with the SAFETY reasoning of each step; tests in process/tests.rs"),
    ("src/backend/container/net.rs", "the container's whole network plan (direct veth, bridge, NAT) with its privileged tests; ip/nft wrappers still to move to host::net"),
    ("src/backend/container/syscalls.rs", "the numbered syscall sequence of the container behind one recording seam, with its order tests"),
    ("src/backend/runtimes/docker.rs", "the Docker tier: daemon API, image cache and ownership labels, with tests"),
    ("src/backend/runtimes/oci.rs", "the OCI bundle and the runc/crun/runsc/LXC launch, with tests"),
    ("src/backend/vm/mod.rs", "the VM tiers' prepare/run/teardown and availability, with tests"),
    ("src/backend/vm/kernel.rs", "guest kernel fetch, unpack and verification (Debian package format), with tests"),
    ("src/host/cgroup.rs", "cgroup v1/v2/hybrid management (create, limit, kill, remove) with its privileged tests"),
    ("src/state/ledger.rs", "the ledger and its locked run directories, with tests"),
    ("src/state/cleanup/validate.rs", "one validation rule per ledger resource kind, with a test per rule"),
    ("src/measure/runner.rs", "the runner's rounds, budgets and result bookkeeping"),
    ("src/measure/plan.rs", "the seeded balanced launch order, the schedule of rounds and its remaining-time estimate, with their tests"),
    ("src/report/claims.rs", "one verdict per published claim, with tests"),
    ("src/report/published.rs", "every published figure (felter2015.toml, published.toml) paired with our metric, its range check and parameters, with tests"),
    ("src/report/charts.rs", "every chart of the report, with tests"),
    ("src/model/scenario/bounds.rs", "every bound a scenario can break, fixed and against the machine, in one table with its tests"),
];

const LINE_LIMIT: usize = 600;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` -> ["a","b"]; `src/a/mod.rs` -> ["a"]; `src/lib.rs` -> []; `src/main.rs` ->
/// ["main"]; `src/bin/x.rs` -> None (separate binaries).
fn module_of(rel: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] {
        parts.clear();
    }
    Some(parts)
}

fn node_of(module: &[String]) -> String {
    match module {
        [] => "root".into(),
        [a] => a.clone(),
        [a, b, ..] if FOLDERS.contains(&a.as_str()) => format!("{a}::{b}"),
        [a, ..] => a.clone(),
    }
}

/// Every path the text names through `crate::`, `$crate::`, `isobench::` or `super::`,
/// expanded (grouped imports give one path per member), as module segments from the crate root.
fn referenced_paths(text: &str, module: &[String]) -> Vec<Vec<String>> {
    let b = text.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        if !text.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &text[i..];
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let (base, skip): (Vec<String>, usize) = if !boundary {
            (vec![], 0)
        } else if let Some(r) = ["$crate::", "crate::", "isobench::"]
            .iter()
            .find(|p| rest.starts_with(**p))
        {
            (vec![], r.len())
        } else if rest.starts_with("super::") {
            let mut m = module.to_vec();
            let mut n = 0;
            while text[i + n..].starts_with("super::") {
                m.pop();
                n += "super::".len();
            }
            (m, n)
        } else {
            (vec![], 0)
        };
        if skip == 0 {
            i += 1;
            continue;
        }
        let (paths, used) = parse_tree(&text[i + skip..]);
        for p in paths {
            let mut full = base.clone();
            full.extend(p);
            out.push(full);
        }
        i += skip + used.max(1);
    }
    out
}

/// Parse `a::b::{c, d::e}` (only lowercase segments are modules); returns the module paths and
/// the bytes consumed.
fn parse_tree(s: &str) -> (Vec<Vec<String>>, usize) {
    let mut segs = vec![];
    let mut i = 0;
    let b = s.as_bytes();
    loop {
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let seg = &s[start..i];
        if seg.is_empty() {
            if s[i..].starts_with('{') {
                let mut depth = 0;
                let mut j = i;
                let mut item_start = i + 1;
                let mut paths = vec![];
                while j < b.len() {
                    match b[j] {
                        b'{' => depth += 1,
                        b'}' | b',' if depth == 1 => {
                            let (sub, _) = parse_tree(s[item_start..j].trim_start());
                            for p in sub {
                                let mut full = segs.clone();
                                full.extend(p);
                                paths.push(full);
                            }
                            item_start = j + 1;
                            if b[j] == b'}' {
                                return (paths, j + 1);
                            }
                        }
                        b'}' => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
            }
            return (vec![segs], i);
        }
        if !seg.starts_with(|c: char| c.is_ascii_lowercase()) || seg == "self" {
            return (vec![segs], i);
        }
        segs.push(seg.to_string());
        if s[i..].starts_with("::") {
            i += 2;
        } else {
            return (vec![segs], i);
        }
    }
}

struct Graph {
    nodes: BTreeSet<String>,
    edges: BTreeMap<String, BTreeSet<String>>,
    /// (from, to) -> a file that makes the edge.
    why: BTreeMap<(String, String), String>,
}

fn graph() -> Graph {
    let root = src();
    let mut files = vec![];
    rs_files(&root, &mut files);
    files.sort();
    let modules: BTreeSet<Vec<String>> = files
        .iter()
        .filter_map(|f| module_of(f.strip_prefix(&root).unwrap()))
        .collect();
    let mut g = Graph {
        nodes: BTreeSet::new(),
        edges: BTreeMap::new(),
        why: BTreeMap::new(),
    };
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap();
        let Some(module) = module_of(rel) else {
            continue;
        };
        if module.last().is_some_and(|m| m == "tests") {
            continue; // a unit-test module in a file of its own
        }
        let text = std::fs::read_to_string(f).unwrap();
        let code: String = text
            .lines()
            .take_while(|l| !l.starts_with("#[cfg(test)]"))
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let from = node_of(&module);
        g.nodes.insert(from.clone());
        for p in referenced_paths(&code, &module) {
            let mut target = p.clone();
            while !target.is_empty() && !modules.contains(&target) {
                target.pop();
            }
            if target.is_empty() && !p.is_empty() {
                continue; // an item of the crate root (e.g. a macro): no module edge
            }
            let to = node_of(&target);
            if to != from {
                g.edges.entry(from.clone()).or_default().insert(to.clone());
                g.why
                    .entry((from.clone(), to))
                    .or_insert_with(|| rel.display().to_string());
            }
        }
    }
    g
}

fn layer_of(node: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, ns)| ns.contains(&node))
        .or_else(|| {
            tiers()
                .iter()
                .any(|t| t == node)
                .then(|| {
                    LAYERS
                        .iter()
                        .position(|(name, _)| name.starts_with(TIER_LAYER))
                })
                .flatten()
        })
}

/// Strongly connected components with more than one node (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        if let Some(ws) = t.g.edges.get(v) {
            for w in ws {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = vec![];
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: vec![],
        on: BTreeSet::new(),
        out: vec![],
    };
    let all: BTreeSet<&str> = g
        .nodes
        .iter()
        .map(String::as_str)
        .chain(g.edges.values().flatten().map(String::as_str))
        .collect();
    for v in all {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_import_cycle_in_src() {
    let g = graph();
    let cs = cycles(&g);
    let mut msg = String::new();
    for c in &cs {
        msg.push_str(&format!("cycle: {}\n", c.join(" <-> ")));
        for a in c {
            for b in c {
                if g.edges.get(a).is_some_and(|e| e.contains(b)) {
                    msg.push_str(&format!(
                        "  {a} -> {b} ({})\n",
                        g.why[&(a.clone(), b.clone())]
                    ));
                }
            }
        }
    }
    assert!(cs.is_empty(), "import cycles in src/:\n{msg}");
}

#[test]
fn every_module_has_a_layer_and_imports_only_downwards() {
    let g = graph();
    let mut problems = vec![];
    for n in &g.nodes {
        if layer_of(n).is_none() {
            problems.push(format!(
                "module {n} has no layer: add it to LAYERS in tests/architecture.rs"
            ));
        }
    }
    for (from, tos) in &g.edges {
        for to in tos {
            if let (Some(a), Some(b)) = (layer_of(from), layer_of(to)) {
                if b > a {
                    problems.push(format!(
                        "{from} (layer {a}: {}) imports {to} (layer {b}: {}), above it ({})",
                        LAYERS[a].0,
                        LAYERS[b].0,
                        g.why[&(from.clone(), to.clone())]
                    ));
                }
            }
        }
    }
    // The layers, for whoever reads the test output (`--nocapture`).
    for (i, (name, nodes)) in LAYERS.iter().enumerate() {
        let present: Vec<&str> = nodes
            .iter()
            .copied()
            .filter(|n| g.nodes.contains(*n))
            .collect();
        println!("layer {i} {name}: {}", present.join(", "));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn tiers_do_not_import_each_other() {
    let g = graph();
    let mut problems = vec![];
    let tiers = tiers();
    for from in &tiers {
        for to in g.edges.get(from).into_iter().flatten() {
            if tiers.contains(to) && !TIER_EXCEPTIONS.iter().any(|(a, b, _)| a == from && b == to) {
                problems.push(format!(
                    "{from} imports {to} ({}): share the helper through backend::resources, backend::process or host::*",
                    g.why[&(from.clone(), to.clone())]
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_model_layer_imports_nothing_above_it() {
    let g = graph();
    let model = layer_of("model").unwrap();
    for n in LAYERS[model].1 {
        for to in g.edges.get(*n).into_iter().flatten() {
            assert!(
                layer_of(to).is_some_and(|l| l <= model),
                "{n} imports {to} ({})",
                g.why[&(n.to_string(), to.clone())]
            );
        }
    }
}

#[test]
fn no_long_file_without_a_reason() {
    let root = src();
    let mut files = vec![];
    rs_files(&root, &mut files);
    let mut problems = vec![];
    for f in files {
        let rel = Path::new("src").join(f.strip_prefix(&root).unwrap());
        let rel = rel.to_string_lossy().into_owned();
        let lines = std::fs::read_to_string(&f).unwrap().lines().count();
        let exempt = LONG_FILES.iter().any(|(p, _)| *p == rel);
        if lines > LINE_LIMIT && !exempt {
            problems.push(format!(
                "{rel} has {lines} lines (over {LINE_LIMIT}): split it, or add it to LONG_FILES with the reason"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn main_stays_short() {
    let n = std::fs::read_to_string(src().join("main.rs"))
        .unwrap()
        .lines()
        .count();
    assert!(
        n < 150,
        "src/main.rs has {n} lines: it parses, dispatches and maps the exit code; commands live in src/commands/"
    );
}

#[test]
fn the_parser_reads_grouped_and_relative_paths() {
    let m = vec!["backend".to_string(), "bare".to_string()];
    let p = referenced_paths(
        "use crate::host::{fs::safe_remove_tree, proc};\nuse super::resources::X;\nlet x = isobench::model::tier::Tier::Bare;",
        &m,
    );
    let s: Vec<String> = p.iter().map(|v| v.join("::")).collect();
    assert_eq!(
        s,
        vec![
            "host::fs::safe_remove_tree",
            "host::proc",
            "backend::resources",
            "model::tier"
        ]
    );
}
