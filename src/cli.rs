//! Command-line types (clap only). `main` turns them into plain config structs before anything
//! else sees them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Download Debian's linux-image-amd64 and keep the guest kernel and modules in the cache.
    FetchKernel {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// (Re)draw the report of a run: index.html, charts/*.svg|png and summary.md in its folder.
    Report {
        /// The run's folder (holding results.json).
        #[arg(default_value = "reports/latest")]
        run_dir: PathBuf,
        /// Open index.html in a browser (xdg-open or chromium) when one is there.
        #[arg(long)]
        open: bool,
    },
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
    /// Tiers to run, comma-separated (bare,chroot,container,microvm,emulated).
    #[arg(long, alias = "tiers", value_name = "LIST")]
    pub backends: Option<String>,
    /// Measured launches per tier and workload (overrides the scenario).
    #[arg(short = 'n', long, value_name = "N")]
    pub runs: Option<u32>,
    /// Output directory [default: reports/<timestamp>-<host>, and reports/latest points at it].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Backend setting, key=value (repeatable), e.g. --set qemu=/usr/local/bin/qemu-system-x86_64.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// No progress bar or table; only errors.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub common: CommonArgs,
}
