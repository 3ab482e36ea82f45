//! Command-line types (clap only). `main` turns them into plain config structs before anything
//! else sees them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::model::tier::Tier;

#[derive(Debug, Parser)]
#[command(
    name = "isobench",
    version,
    about = "Measure what each isolation tier costs: bare, chroot, container, microVM, emulated VM"
)]
pub struct Cli {
    /// More diagnostics on stderr (-v, -vv).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// What this host can run, and if not, why and how to fix it.
    Doctor {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Run a scenario on every available tier (or those given) and write results.
    Run(RunArgs),
    /// Remove what a killed isobench left behind (mounts, cgroups, devices, processes, files).
    Cleanup {
        /// Also remove the docker tier's cached agent images (isobench's label, not used by any
        /// container), unless a run of this state directory is alive. A cache, not a leftover:
        /// kept unless asked, since runs of other state directories may be using it.
        #[arg(long)]
        images: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Download Debian's linux-image-amd64 and keep the guest kernel and modules in the cache.
    FetchKernel {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Compare two runs metric by metric; exit 0 none regressed, 1 regressed, 2 error, 3 cannot
    /// see (too few runs for any metric to be significant, or nothing decided).
    Compare(CompareArgs),
    /// Same-host A/B: two variants of one tier (backend settings), interleaved, then compared.
    Ab(AbArgs),
    /// Per-metric trends of the stored runs, and a trend chart per metric.
    History(HistoryArgs),
    /// (Re)draw the report of a run: index.html, charts/*.svg|png and summary.md in its folder;
    /// given two or more runs (e.g. from several hosts), one merged report with a column per run.
    Report {
        /// The run's folder (holding results.json); two or more: a merged report into --out.
        #[arg(default_value = "reports/latest", num_args = 1..)]
        run_dirs: Vec<PathBuf>,
        /// Where a merged report (two or more runs) is written [default: reports/merged].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Open index.html in a browser ($BROWSER, xdg-open, or chromium on a display) when one
        /// is there; without one, say so and print the path (exit 0).
        #[arg(long)]
        open: bool,
    },
    /// Print a shell completion script (e.g. `isobench completions bash >
    /// /etc/bash_completion.d/isobench`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from this command line: `isobench man | man -l -`;
    /// `isobench man run` for one subcommand's.
    Man {
        /// A subcommand (run, report, compare, ...).
        subcommand: Option<String>,
    },
}

/// `run --backends`: the names come from [`Tier`], the default set from the registry.
fn backends_help() -> String {
    let default: Vec<&str> = crate::backend::registry::default_tiers()
        .iter()
        .map(|t| t.as_str())
        .collect();
    format!(
        "Tiers to run, comma-separated [default: the scenario's `tiers`, else {}] [possible values: {}]",
        default.join(","),
        Tier::names()
    )
}

/// `ab --backends`.
fn ab_tier_help() -> String {
    format!(
        "The one tier both variants run in [possible values: {}]",
        Tier::names()
    )
}

#[derive(Debug, Args, Clone)]
pub struct CommonArgs {
    /// Guest kernel (bzImage) for the VM tiers, instead of the cached Debian kernel.
    #[arg(long, value_name = "PATH", global = true)]
    pub kernel: Option<PathBuf>,
    /// Ledger of created resources [default: $ISOBENCH_STATE_DIR or /var/lib/isobench].
    #[arg(long, value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Cache for guest kernels [default: $ISOBENCH_CACHE_DIR or /var/cache/isobench].
    #[arg(long, value_name = "DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Scenario file [default: scenarios/default.toml, or the built-in default].
    pub scenario: Option<PathBuf>,
    #[arg(long, alias = "tiers", value_name = "LIST", help = backends_help())]
    pub backends: Option<String>,
    /// Measured launches per tier and workload, 1 to 100000 (overrides the scenario).
    #[arg(short = 'n', long, value_name = "N")]
    pub runs: Option<u32>,
    /// Output directory: new, empty, or an earlier run's [default: reports/<timestamp>-<host>,
    /// and reports/latest points at it].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write into --out even when it is a non-empty directory that is not an isobench run's
    /// (files of the same names are overwritten).
    #[arg(long)]
    pub force_out: bool,
    /// Backend setting, key=value (repeatable), e.g. --set disk_mib=512; checked against the
    /// settings of the tiers that run (`isobench doctor` lists each tier's), as a scenario's
    /// `[settings]` are; --set wins over the scenario.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// Seed of the launch order within rounds (a balanced random order; same seed, same order)
    /// [default: the scenario's `seed`, else a random one; recorded in results.json].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// No progress, claims or file lines; only errors.
    #[arg(short, long)]
    pub quiet: bool,
    /// Also print the full metric table (median, interval, ratio to bare per tier and metric);
    /// summary.md has it either way.
    #[arg(long)]
    pub table: bool,
    /// After the run, compare against a run (its folder or results.json) or `history` (the last
    /// runs of this host and scenario) and exit as `isobench compare` does.
    #[arg(long, value_name = "PATH|history")]
    pub baseline: Option<String>,
    /// Thresholds and alpha for --baseline (TOML, see docs/compare.md).
    #[arg(long, value_name = "FILE")]
    pub thresholds: Option<PathBuf>,
    /// History database the run is stored in.
    #[arg(long, value_name = "PATH", default_value = crate::history::DEFAULT_PATH)]
    pub history: PathBuf,
    /// Do not store the run in the history database.
    #[arg(long)]
    pub no_history: bool,
    /// Label of the run, key=value (repeatable; one word means label=WORD), e.g. --label
    /// host_class=kvm-metal --label kernel=6.1: stored in results.json and the history; merged
    /// reports and `history --label` group by it.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args, Clone)]
pub struct CompareArgs {
    /// The baseline: a run folder or its results.json.
    pub base: PathBuf,
    /// The run to judge: a run folder or its results.json.
    pub new: PathBuf,
    #[arg(long, value_enum, default_value_t = crate::compare::render::Format::Table)]
    pub format: crate::compare::render::Format,
    /// Thresholds and alpha (TOML, see docs/compare.md) [default: the base run's scenario
    /// `[compare]` table, else built-in defaults; never the new run's].
    #[arg(long, value_name = "FILE")]
    pub thresholds: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct AbArgs {
    /// Scenario file [default: scenarios/default.toml, or the built-in default].
    pub scenario: Option<PathBuf>,
    #[arg(long, alias = "tier", value_name = "TIER", help = ab_tier_help())]
    pub backends: String,
    /// Variant A's settings, key=value (repeatable): kernel=PATH is the guest kernel, anything
    /// else a backend setting (as --set).
    #[arg(long = "a", value_name = "KEY=VALUE", required = true)]
    pub a: Vec<String>,
    /// Variant B's settings, as --a.
    #[arg(long = "b", value_name = "KEY=VALUE", required = true)]
    pub b: Vec<String>,
    /// Measured launches per variant and workload (overrides the scenario).
    #[arg(short = 'n', long, value_name = "N")]
    pub runs: Option<u32>,
    /// Output directory (results in <DIR>/a and <DIR>/b): new, empty, or an earlier A/B's
    /// [default: reports/ab-<timestamp>-<host>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write into --out even when it is a non-empty directory that is not an isobench A/B's.
    #[arg(long)]
    pub force_out: bool,
    #[arg(long, value_enum, default_value_t = crate::compare::render::Format::Table)]
    pub format: crate::compare::render::Format,
    /// Thresholds and alpha (TOML, see docs/compare.md).
    #[arg(long, value_name = "FILE")]
    pub thresholds: Option<PathBuf>,
    /// Seed of the launch order within rounds (a balanced random order; same seed, same order)
    /// [default: the scenario's `seed`, else a random one; recorded in results.json].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// No progress bar; only the comparison and errors.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args, Clone)]
pub struct HistoryArgs {
    /// History database.
    #[arg(long, value_name = "PATH", default_value = crate::history::DEFAULT_PATH)]
    pub history: PathBuf,
    /// Only this metric (e.g. launch_to_exit_ms).
    #[arg(long, value_name = "NAME")]
    pub metric: Option<String>,
    /// How many of the latest runs to show.
    #[arg(long, value_name = "K", default_value_t = 20)]
    pub last: usize,
    /// Only runs of this host (its hostname).
    #[arg(long, value_name = "NAME", global = true)]
    pub host: Option<String>,
    /// Only runs of this scenario (its name).
    #[arg(long, value_name = "NAME", global = true)]
    pub scenario: Option<String>,
    /// Only runs carrying this label, key=value or one word (repeatable: all must match).
    #[arg(long = "label", value_name = "KEY=VALUE", global = true)]
    pub labels: Vec<String>,
    #[command(subcommand)]
    pub action: Option<HistoryAction>,
}

/// `isobench history export|import`: move runs between history databases.
#[derive(Debug, Subcommand, Clone)]
pub enum HistoryAction {
    /// Write the runs (all, or those the filters select) to FILE as JSON lines, one run a line.
    Export {
        /// The portable file to write (`-` for stdout).
        file: PathBuf,
    },
    /// Add the runs of exported FILEs (or results.json files / run folders); a run already
    /// stored (same run id and host) is skipped, so importing twice stores it once.
    Import {
        #[arg(required = true, num_args = 1..)]
        files: Vec<PathBuf>,
    },
}
