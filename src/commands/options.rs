//! Arguments shared by several commands turned into plain config, once: the state and cache
//! directories, the backend options (`--kernel`, `--set` checked against the tiers that run),
//! the scenario, the signal handlers and the exit code of an interrupted run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::backend::registry;
use crate::backend::BackendOptions;
use crate::cli::CommonArgs;
use crate::exit_codes::ExitCode;
use crate::interrupt::Interrupt;
use crate::model::scenario::{Scenario, DEFAULT_SCENARIO};
use crate::model::tier::Tier;
use crate::state::ledger::StateDir;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `--state-dir`, else `$ISOBENCH_STATE_DIR` or the default.
pub fn state_root(c: &CommonArgs) -> PathBuf {
    if let Some(p) = &c.state_dir {
        return p.clone();
    }
    StateDir::default_root()
}

/// `--cache-dir`, else `$ISOBENCH_CACHE_DIR`, else /var/cache/isobench (root) or ~/.cache.
pub fn cache_dir(c: &CommonArgs) -> PathBuf {
    if let Some(p) = &c.cache_dir {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("ISOBENCH_CACHE_DIR") {
        return PathBuf::from(p);
    }
    if is_root() {
        return PathBuf::from("/var/cache/isobench");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/isobench"))
        .unwrap_or_else(|| std::env::temp_dir().join("isobench-cache"))
}

/// `key=value` strings (`--set`) as a map; the error says the expected form.
pub fn parse_settings(settings: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for s in settings {
        let Some((k, v)) = s.split_once('=') else {
            bail!("--set {s}: expected key=value, e.g. --set qemu=/usr/bin/qemu-system-x86_64");
        };
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// The backend options of a run of `tiers`: `--kernel`, the scenario's `[settings]` and then
/// `--set` (the command line wins), every key checked against the tiers' typed settings.
pub fn backend_options(
    c: &CommonArgs,
    tiers: &[Tier],
    scenario: Option<(&Scenario, &str)>,
    settings: &[String],
) -> anyhow::Result<BackendOptions> {
    let mut opts = BackendOptions {
        kernel: c.kernel.clone(),
        cache_dir: cache_dir(c),
        ..Default::default()
    };
    if let Some(k) = &opts.kernel {
        if !k.is_file() {
            bail!("--kernel {}: no such file (give the path of a bzImage, or drop --kernel to use the cached Debian kernel)", k.display());
        }
    }
    if let Some((s, origin)) = scenario {
        let from_file = s.settings();
        registry::check_settings(tiers, &from_file, &format!("{origin}: [settings]"))?;
        opts.settings.extend(from_file);
    }
    let from_cli = parse_settings(settings)?;
    registry::check_settings(tiers, &from_cli, "--set")?;
    opts.settings.extend(from_cli);
    Ok(opts)
}

/// The scenario file given, else scenarios/default.toml, else the built-in default; with the
/// name errors give it.
pub fn scenario_or_default(p: Option<&Path>) -> anyhow::Result<(Scenario, String)> {
    let default = PathBuf::from("scenarios/default.toml");
    let path = match p {
        Some(p) => p,
        None if default.is_file() => &default,
        None => {
            let origin = "built-in default scenario".to_string();
            return Ok((Scenario::parse(DEFAULT_SCENARIO, &origin)?, origin));
        }
    };
    Ok((Scenario::load(path)?, path.display().to_string()))
}

/// The signal handlers of a run (every signal that ends a session; see `crate::interrupt`).
pub fn install_interrupt(state_root: &Path) -> anyhow::Result<Interrupt> {
    Interrupt::install(format!(
        "the ledger under the state directory {}",
        state_root.display()
    ))
    .context("installing the signal handlers (SIGINT, SIGTERM, SIGHUP, SIGQUIT)")
    .inspect(|_| {
        // From here on a closed stdout must not end the process: the run tears down first.
        crate::output::keep_going_on_closed_stdout();
    })
}

/// The exit code of an interrupted run: 128 + the signal (130 for Ctrl-C).
pub fn interrupted(i: &Interrupt) -> ExitCode {
    ExitCode::Interrupted(i.signal().unwrap_or(signal_hook::consts::SIGINT))
}
