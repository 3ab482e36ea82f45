//! `isobench`: the command-line edge. Parses arguments into plain config, runs, maps errors to
//! exit codes in one place.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;

use isobench::backend::BackendOptions;
use isobench::cli::{Cli, Command, CommonArgs, RunArgs};
use isobench::exit_codes::ExitCode;
use isobench::host::HostFacts;
use isobench::runner::{self, RunConfig};
use isobench::scenario::{Scenario, DEFAULT_SCENARIO};
use isobench::state::StateDir;
use isobench::tier::Tier;
use isobench::{doctor, output};

fn main() {
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ISOBENCH_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .without_time()
        .init();
    let code = match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::Error
        }
    };
    std::process::exit(code.code());
}

fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Doctor { json, common } => {
            let report = doctor::diagnose(HostFacts::detect(), &backend_options(&common, &[])?);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", doctor::render(&report));
            }
            Ok(ExitCode::Success)
        }
        Command::Run(args) => run(args),
        Command::Cleanup { common } => {
            let root = state_root(&common);
            let state = StateDir::open(&root)
                .with_context(|| format!("opening state directory {}", root.display()))?;
            let report = isobench::cleanup::cleanup(&state);
            if report.runs.is_empty() {
                println!("nothing to clean in {}", root.display());
            }
            for r in &report.runs {
                match &r.skipped {
                    Some(why) => println!("left {}: {why}", r.run_dir.display()),
                    None => println!(
                        "cleaned {}: killed {} process(es), unmounted {}, removed {} cgroup(s) and {} link(s){}",
                        r.run_dir.display(),
                        r.killed.len(),
                        r.unmounted.len(),
                        r.cgroups_removed.len(),
                        r.links_removed.len(),
                        if r.errors.is_empty() { String::new() } else { format!("; errors: {}", r.errors.join("; ")) }
                    ),
                }
            }
            Ok(if report.is_clean() {
                ExitCode::Success
            } else {
                ExitCode::Failure
            })
        }
        Command::Report { run_dir, open } => report(&run_dir, open),
        Command::FetchKernel { common } => {
            let _ = common;
            bail!("TEMP")
        }
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn state_root(c: &CommonArgs) -> PathBuf {
    if let Some(p) = &c.state_dir {
        return p.clone();
    }
    if std::env::var_os("ISOBENCH_STATE_DIR").is_some() || is_root() {
        return StateDir::default_root();
    }
    std::env::temp_dir().join(format!("isobench-{}", nix::unistd::geteuid()))
}

fn cache_dir(c: &CommonArgs) -> PathBuf {
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

fn backend_options(c: &CommonArgs, settings: &[String]) -> anyhow::Result<BackendOptions> {
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
    for s in settings {
        let Some((k, v)) = s.split_once('=') else {
            bail!("--set {s}: expected key=value, e.g. --set qemu=/usr/bin/qemu-system-x86_64");
        };
        opts.settings
            .insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(opts)
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Validate every input before any side effect.
    let scenario = match &args.scenario {
        Some(p) => Scenario::load(p)?,
        None => {
            let p = PathBuf::from("scenarios/default.toml");
            if p.is_file() {
                Scenario::load(&p)?
            } else {
                Scenario::parse(DEFAULT_SCENARIO, "built-in default scenario")?
            }
        }
    };
    let explicit = args.backends.is_some();
    let tiers = match &args.backends {
        Some(list) => Tier::parse_list(list)?,
        None => scenario.tiers(),
    };
    if tiers.is_empty() {
        bail!("--backends is empty: name at least one tier, e.g. --backends bare,container");
    }
    if args.runs == Some(0) {
        bail!("-n 0: give at least one launch per tier");
    }
    if explicit && !is_root() {
        let need: Vec<&str> = tiers
            .iter()
            .filter(|t| **t != Tier::Bare)
            .map(|t| t.as_str())
            .collect();
        if !need.is_empty() {
            bail!(
                "{} need root: run `sudo isobench run ...`, or ask only for --backends bare",
                need.join(", ")
            );
        }
    }
    let options = backend_options(&args.common, &args.settings)?;
    let host = HostFacts::detect();
    let (out_dir, link_latest) = match &args.out {
        Some(p) => (p.clone(), false),
        None => {
            let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
            (
                PathBuf::from("reports").join(format!("{stamp}-{}", host.hostname)),
                true,
            )
        }
    };
    let cfg = RunConfig {
        scenario,
        tiers,
        runs_override: args.runs,
        out_dir,
        link_latest,
        state_root: state_root(&args.common),
        cache_dir: options.cache_dir.clone(),
        agent: runner::locate_agent()?,
        options,
        quiet: args.quiet,
    };

    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, cancel.clone())
            .context("installing the Ctrl-C handler")?;
    }
    let outcome = runner::run(&cfg, cancel, host)?;
    let r = &outcome.results;
    if !cfg.quiet {
        println!("{}", output::results_table(r));
        for line in output::tier_notes(r) {
            println!("{line}");
        }
        println!(
            "results: {}",
            outcome.out_dir.join("results.json").display()
        );
        println!("samples: {}", outcome.out_dir.join("samples.csv").display());
    }
    if r.interrupted {
        eprintln!(
            "interrupted: the completed launches are kept in {}",
            outcome.out_dir.display()
        );
        return Ok(ExitCode::Interrupted);
    }
    let failed = r
        .tiers
        .iter()
        .any(|t| t.status == isobench::results::TierStatus::Failed);
    Ok(if failed {
        ExitCode::Failure
    } else {
        ExitCode::Success
    })
}

/// `isobench report DIR [--open]`: redraw the report of a finished (or interrupted) run.
fn report(run_dir: &std::path::Path, open: bool) -> anyhow::Result<ExitCode> {
    let results = isobench::results::Results::load(run_dir)?;
    let files = isobench::report::write_report(run_dir, &results)
        .with_context(|| format!("writing the report into {}", run_dir.display()))?;
    println!("report: {}", files.index_html.display());
    println!("summary: {}", files.summary_md.display());
    if open {
        let browser = ["xdg-open", "chromium"]
            .into_iter()
            .find_map(|b| isobench::host::which(b).map(|p| (b, p)));
        match browser {
            Some((name, path)) => {
                let mut cmd = std::process::Command::new(path);
                if name == "chromium" && is_root() {
                    cmd.arg("--no-sandbox");
                }
                cmd.arg(&files.index_html)
                    .spawn()
                    .with_context(|| format!("starting {name}"))?;
            }
            None => println!(
                "no browser found (neither xdg-open nor chromium): open {} yourself",
                files.index_html.display()
            ),
        }
    }
    Ok(ExitCode::Success)
}
