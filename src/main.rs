//! `isobench`: the command-line edge. Parses arguments into plain config, runs, maps errors to
//! exit codes in one place.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Parser;

use isobench::backend::BackendOptions;
use isobench::bounds::{self, Machine};
use isobench::cli::{AbArgs, Cli, Command, CommonArgs, CompareArgs, HistoryArgs, RunArgs};
use isobench::exit_codes::ExitCode;
use isobench::host::HostFacts;
use isobench::interrupt::Interrupt;
use isobench::runner::{self, RunConfig};
use isobench::scenario::{Scenario, DEFAULT_SCENARIO};
use isobench::state::StateDir;
use isobench::tier::Tier;
use isobench::{doctor, outdir, outln};

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
            // Never a panic, even on a closed stderr (a dropped ssh session).
            isobench::output::err(format_args!("error: {e:#}"));
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
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                isobench::out!("{}", doctor::render(&report));
            }
            Ok(ExitCode::Success)
        }
        Command::Run(args) => run(args),
        Command::Compare(args) => compare_cmd(&args),
        Command::Ab(args) => ab_cmd(args),
        Command::History(args) => history_cmd(&args),
        Command::Cleanup { images, common } => {
            let root = state_root(&common);
            let state = StateDir::open(&root)
                .with_context(|| format!("opening state directory {}", root.display()))?;
            let report = isobench::cleanup::cleanup(&state);
            // The docker tier's image cache (isobench/agent:<hash>, labelled as isobench's) goes
            // too, when a daemon answers and no live run may use it (see docs/runtimes.md).
            let images = if images
                && std::os::unix::net::UnixStream::connect(
                    isobench::backend::runtimes::docker::daemon_socket(),
                )
                .is_ok()
            {
                isobench::backend::runtimes::docker::remove_cached_images(any_live_run(&report))
            } else {
                Ok(Default::default())
            };
            match &images {
                Ok(r) => {
                    if !r.removed.is_empty() {
                        outln!("removed cached docker image(s): {}", r.removed.join(", "));
                    }
                    for k in &r.kept {
                        outln!("kept cached docker image {k}");
                    }
                }
                Err(e) => outln!("cached docker images left: {e}"),
            }
            if report.runs.is_empty() {
                outln!("nothing to clean in {}", root.display());
            }
            for r in &report.runs {
                match &r.skipped {
                    Some(why) => outln!("left {}: {why}", r.run_dir.display()),
                    None => outln!(
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
            Ok(if report.is_clean() && images.is_ok() {
                ExitCode::Success
            } else {
                ExitCode::Failure
            })
        }
        Command::Report { run_dir, open } => report(&run_dir, open),
        Command::FetchKernel { common } => {
            let k = isobench::backend::vm::kernel::fetch(&cache_dir(&common))
                .context("fetching the guest kernel")?;
            outln!(
                "guest kernel {} cached at {}",
                k.version,
                k.vmlinuz.display()
            );
            Ok(ExitCode::Success)
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
    StateDir::default_root()
}

/// Did cleanup leave a run because its owner is still running (so its cached images stay)?
fn any_live_run(report: &isobench::cleanup::CleanupReport) -> bool {
    report.runs.iter().any(|r| r.live)
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
    // Validate every input before any side effect: nothing (state directory, --out) is created
    // until every check below has passed.
    check_baseline(&args)?;
    if let Some(n) = args.runs {
        bounds::check_runs_override(n).map_err(anyhow::Error::msg)?;
    }
    let (scenario, origin) = scenario_or_default(args.scenario.as_deref())?;
    let explicit = args.backends.is_some();
    let tiers = match &args.backends {
        Some(list) => Tier::parse_list(list)?,
        None => scenario.tiers(),
    };
    if tiers.is_empty() {
        bail!("--backends is empty: name at least one tier, e.g. --backends bare,container");
    }
    let state_root = state_root(&args.common);
    scenario.check_machine(&origin, &tiers, &Machine::probe(&state_root))?;
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
        Some(p) => (outdir::check(p, args.force_out)?, false),
        None => {
            let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
            (
                outdir::default_path(Path::new("reports"), &format!("{stamp}-{}", host.hostname))?,
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
        state_root,
        cache_dir: options.cache_dir.clone(),
        agent: runner::locate_agent()?,
        options,
        quiet: args.quiet,
        seed: args.seed,
    };

    let interrupt = install_interrupt(&cfg.state_root)?;
    let outcome = runner::run(&cfg, interrupt.cancel.clone(), host)?;
    let r = &outcome.results;
    if !cfg.quiet {
        outln!("{}", isobench::output::results_table(r));
        for line in isobench::output::tier_notes(r) {
            outln!("{line}");
        }
        outln!(
            "results: {}",
            outcome.out_dir.join("results.json").display()
        );
        outln!("samples: {}", outcome.out_dir.join("samples.csv").display());
    }
    // The report reads the result files only; a failure to draw it never loses the results.
    match isobench::report::write_report(&outcome.out_dir, r) {
        Ok(files) if !cfg.quiet => outln!("report:  {}", files.index_html.display()),
        Ok(_) => {}
        Err(e) => eprintln!("warning: the report could not be drawn ({e}); the results are kept, retry with `isobench report {}`", outcome.out_dir.display()),
    }
    if r.interrupted {
        isobench::output::err(format_args!(
            "interrupted: the completed launches are kept in {}",
            outcome.out_dir.display()
        ));
        return Ok(interrupted(&interrupt));
    }
    let failed = r
        .tiers
        .iter()
        .any(|t| t.status == isobench::results::TierStatus::Failed);
    let code = if failed {
        ExitCode::Failure
    } else {
        ExitCode::Success
    };
    after_run(&args, r, code)
}

/// `isobench report DIR [--open]`: redraw the report of a finished (or interrupted) run.
fn report(run_dir: &std::path::Path, open: bool) -> anyhow::Result<ExitCode> {
    let results = isobench::results::Results::load(run_dir)?;
    let files = isobench::report::write_report(run_dir, &results)
        .with_context(|| format!("writing the report into {}", run_dir.display()))?;
    outln!("report: {}", files.index_html.display());
    outln!("summary: {}", files.summary_md.display());
    if open {
        let display =
            std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
        let browser = ["xdg-open", "chromium"]
            .into_iter()
            .filter(|_| display)
            .find_map(|b| isobench::host::which(b).map(|p| (b, p)));
        match browser {
            Some((name, path)) => {
                let mut cmd = std::process::Command::new(path);
                if name == "chromium" && is_root() {
                    cmd.arg("--no-sandbox");
                }
                cmd.arg(&files.index_html).spawn().with_context(|| format!("starting {name}"))?;
            }
            None => outln!("no browser found (no xdg-open or chromium on a graphical display): open {} yourself", files.index_html.display()),
        }
    }
    Ok(ExitCode::Success)
}

// Regression tracking (issue 5): compare, history, A/B. Logic lives in isobench::{compare,
// history, ab}; these functions only turn arguments into config and results into exit codes.

use isobench::compare::render::{render, Format};
use isobench::compare::{compare, CompareOptions, Comparison, Thresholds};
use isobench::history::{self, History};
use isobench::results::Results;

/// Thresholds: --thresholds FILE, else the new run's scenario `[compare]`, else the defaults.
fn compare_options(
    thresholds: Option<&std::path::Path>,
    new: &Results,
) -> anyhow::Result<CompareOptions> {
    let thresholds = match (thresholds, &new.scenario.compare) {
        (Some(p), _) => Thresholds::load(p)?,
        (None, Some(spec)) => Thresholds::from_spec(
            spec.clone(),
            &format!("[compare] of scenario {}", new.scenario.name),
        )?,
        (None, None) => Thresholds::default(),
    };
    Ok(CompareOptions {
        thresholds,
        ..Default::default()
    })
}

/// Print a comparison; exit 1 naming every regressed metric, else 0.
fn report_comparison(c: &Comparison, format: Format) -> ExitCode {
    isobench::out!("{}", render(c, format));
    if format != Format::Table {
        for w in &c.warnings {
            eprintln!("WARNING: {w}");
        }
    }
    let bad: Vec<String> = c
        .regressed()
        .map(|m| format!("{} ({:+.1}%)", m.key(), m.change_pct().unwrap_or(f64::NAN)))
        .collect();
    if bad.is_empty() {
        ExitCode::Success
    } else {
        eprintln!("regressed: {}", bad.join(", "));
        ExitCode::Failure
    }
}

fn compare_cmd(a: &CompareArgs) -> anyhow::Result<ExitCode> {
    let base = Results::load(&a.base)?;
    let new = Results::load(&a.new)?;
    let opts = compare_options(a.thresholds.as_deref(), &new)?;
    let c = compare(
        &base,
        &a.base.display().to_string(),
        &new,
        &a.new.display().to_string(),
        &opts,
    );
    Ok(report_comparison(&c, a.format))
}

/// `run --baseline PATH`: a bad baseline or thresholds file fails before anything runs.
fn check_baseline(args: &RunArgs) -> anyhow::Result<()> {
    if let Some(p) = args.baseline.as_deref().filter(|p| *p != "history") {
        Results::load(std::path::Path::new(p))?;
    }
    if let Some(t) = &args.thresholds {
        Thresholds::load(t)?;
    }
    Ok(())
}

/// After a run: load the baseline (before storing this run), store the run, compare.
fn after_run(args: &RunArgs, r: &Results, code: ExitCode) -> anyhow::Result<ExitCode> {
    let baseline = match args.baseline.as_deref() {
        None => None,
        Some("history") => {
            let h = History::open(&args.history)?;
            let k = history::DEFAULT_BASELINE_RUNS;
            match h.pooled_baseline(&r.host.hostname, &r.scenario.name, k, Some(&r.run_id))? {
                Some((b, rows)) => Some((
                    b,
                    format!(
                        "history: last {} run(s) in {}",
                        rows.len(),
                        args.history.display()
                    ),
                )),
                None => {
                    eprintln!(
                        "no earlier run of scenario {} on host {} in {}: nothing to compare against yet; this run becomes the baseline",
                        r.scenario.name,
                        r.host.hostname,
                        args.history.display()
                    );
                    None
                }
            }
        }
        Some(p) => Some((Results::load(std::path::Path::new(p))?, p.to_string())),
    };
    if !args.no_history {
        let id = history::record(&args.history, r)?;
        if !args.quiet {
            outln!("history: stored as run #{id} in {}", args.history.display());
        }
    }
    let Some((base, label)) = baseline else {
        return Ok(code);
    };
    let opts = compare_options(args.thresholds.as_deref(), r)?;
    let c = compare(&base, &label, r, &r.run_id, &opts);
    Ok(report_comparison(&c, Format::Table))
}

/// The scenario file given, else scenarios/default.toml, else the built-in default; with the
/// name errors give it.
fn scenario_or_default(p: Option<&Path>) -> anyhow::Result<(Scenario, String)> {
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

/// The signal handlers of a run (every signal that ends a session; see `isobench::interrupt`).
fn install_interrupt(state_root: &Path) -> anyhow::Result<Interrupt> {
    Interrupt::install(format!(
        "the ledger under the state directory {}",
        state_root.display()
    ))
    .context("installing the signal handlers (SIGINT, SIGTERM, SIGHUP, SIGQUIT)")
    .inspect(|_| {
        // From here on a closed stdout must not end the process: the run tears down first.
        isobench::output::keep_going_on_closed_stdout();
    })
}

/// The exit code of an interrupted run: 128 + the signal (130 for Ctrl-C).
fn interrupted(i: &Interrupt) -> ExitCode {
    ExitCode::Interrupted(i.signal().unwrap_or(signal_hook::consts::SIGINT))
}

fn ab_cmd(a: AbArgs) -> anyhow::Result<ExitCode> {
    if let Some(n) = a.runs {
        bounds::check_runs_override(n).map_err(anyhow::Error::msg)?;
    }
    let (scenario, origin) = scenario_or_default(a.scenario.as_deref())?;
    let tiers = Tier::parse_list(&a.backends)?;
    let [tier] = tiers[..] else {
        bail!(
            "--backends {}: an A/B runs two variants of exactly one tier, e.g. --backends emulated",
            a.backends
        );
    };
    if tier != Tier::Bare && !is_root() {
        bail!("{tier} needs root: run `sudo isobench ab ...`");
    }
    let base = backend_options(&a.common, &[])?;
    let state_root = state_root(&a.common);
    scenario.check_machine(&origin, &[tier], &Machine::probe(&state_root))?;
    let (va, vb) = (
        isobench::ab::variant("a", &a.a, &base)?,
        isobench::ab::variant("b", &a.b, &base)?,
    );
    let thresholds = a.thresholds.as_deref().map(Thresholds::load).transpose()?;
    let host = HostFacts::detect();
    let out_dir = match &a.out {
        Some(p) => outdir::check_ab(p, a.force_out)?,
        None => {
            let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
            outdir::default_path(
                Path::new("reports"),
                &format!("ab-{stamp}-{}", host.hostname),
            )?
        }
    };
    let cfg = isobench::ab::AbConfig {
        scenario,
        tier,
        a: va,
        b: vb,
        runs_override: a.runs,
        out_dir,
        state_root,
        cache_dir: base.cache_dir.clone(),
        agent: runner::locate_agent()?,
        quiet: a.quiet,
        seed: a.seed,
    };
    let interrupt = install_interrupt(&cfg.state_root)?;
    let (ra, rb) = isobench::ab::run(&cfg, interrupt.cancel.clone(), host)?;
    outln!(
        "results: {} and {}",
        cfg.out_dir.join("a").display(),
        cfg.out_dir.join("b").display()
    );
    if interrupt.signal().is_some() {
        isobench::output::err(format_args!(
            "interrupted: the completed launches are kept in {}",
            cfg.out_dir.display()
        ));
        return Ok(interrupted(&interrupt));
    }
    let opts = match thresholds {
        Some(thresholds) => CompareOptions {
            thresholds,
            ..Default::default()
        },
        None => compare_options(None, &rb)?,
    };
    let c = compare(
        &ra,
        &format!("A: {}", cfg.a.spec.join(" ")),
        &rb,
        &format!("B: {}", cfg.b.spec.join(" ")),
        &opts,
    );
    Ok(report_comparison(&c, a.format))
}

fn history_cmd(a: &HistoryArgs) -> anyhow::Result<ExitCode> {
    if !a.history.is_file() {
        bail!("no history database at {}: `isobench run` stores every run there (unless --no-history); or give --history PATH", a.history.display());
    }
    let h = History::open(&a.history)?;
    let t = h.trends(a.metric.as_deref(), a.last)?;
    if t.runs.is_empty() {
        bail!(
            "{} holds no runs yet: run `isobench run` first",
            a.history.display()
        );
    }
    if t.trends.is_empty() {
        bail!(
            "no metric named {} in {}: `isobench history` without --metric lists them",
            a.metric.as_deref().unwrap_or("-"),
            a.history.display()
        );
    }
    isobench::out!("{}", history::trends::table(&t));
    let dir = a
        .history
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("trends");
    match history::trends::charts(&t, &dir) {
        Ok(files) => outln!(
            "trend charts: {} SVG file(s) in {}",
            files.len(),
            dir.display()
        ),
        Err(e) => eprintln!("warning: no trend charts: {e}"),
    }
    Ok(ExitCode::Success)
}
