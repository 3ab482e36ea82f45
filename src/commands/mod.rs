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
        Command::Completions { shell } => completions(shell),
        Command::Man { subcommand } => man(subcommand.as_deref()),
    }
}

/// `isobench completions SHELL`: the completion script, generated from the clap definition.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut cmd = <crate::cli::Cli as clap::CommandFactory>::command();
    let mut buf = vec![];
    clap_complete::generate(shell, &mut cmd, "isobench", &mut buf);
    crate::out!("{}", String::from_utf8_lossy(&buf));
    Ok(ExitCode::Success)
}

/// `isobench man [SUBCOMMAND]`: the man page (roff) of isobench or of one subcommand.
fn man(sub: Option<&str>) -> anyhow::Result<ExitCode> {
    let cmd = <crate::cli::Cli as clap::CommandFactory>::command();
    let page = match sub {
        None => cmd,
        Some(name) => {
            let Some(s) = cmd.find_subcommand(name) else {
                let names: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).collect();
                anyhow::bail!(
                    "isobench man {name}: no such subcommand (one of: {})",
                    names.join(", ")
                );
            };
            // clap names are &'static str; this process prints one page and exits.
            let full: &'static str = Box::leak(format!("isobench-{name}").into_boxed_str());
            s.clone().name(full).bin_name(full)
        }
    };
    let mut buf = vec![];
    clap_mangen::Man::new(page).render(&mut buf)?;
    crate::out!("{}", String::from_utf8_lossy(&buf));
    Ok(ExitCode::Success)
}
