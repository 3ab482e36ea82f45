//! `isobench`: the command-line edge. Parses arguments, dispatches to `isobench::commands`, and
//! maps errors to exit codes in one place.

use clap::Parser;

use isobench::cli::Cli;
use isobench::exit_codes::ExitCode;

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
    let code = match isobench::commands::dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            // Never a panic, even on a closed stderr (a dropped ssh session).
            isobench::output::err(format_args!("error: {e:#}"));
            ExitCode::Error
        }
    };
    std::process::exit(code.code());
}
