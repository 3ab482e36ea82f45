//! One module per subcommand: each turns its arguments into plain config, calls the library
//! and returns the exit code. `main` only parses, dispatches here and exits.

pub mod ab;
pub mod cleanup;
pub mod compare;
pub mod doctor;
pub mod fetch_kernel;
pub mod history;
pub mod options;
pub mod report;
pub mod run;

use crate::cli::Command;
use crate::exit_codes::ExitCode;

/// Run one subcommand.
pub fn dispatch(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Doctor { json, common } => doctor::run(json, &common),
        Command::Run(args) => run::run(args),
        Command::Compare(args) => compare::run(&args),
        Command::Ab(args) => ab::run(args),
        Command::History(args) => history::run(&args),
        Command::Cleanup { images, common } => cleanup::run(images, &common),
        Command::Report {
            run_dirs,
            open,
            out,
        } => report::dispatch(&run_dirs, out.as_deref(), open),
        Command::FetchKernel { common } => fetch_kernel::run(&common),
    }
}
