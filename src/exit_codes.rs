//! Exit codes, mapped in one place.

/// What the process exits with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything asked for was done.
    Success,
    /// Done, but with a bad outcome: a tier failed every launch (`run`), or a regression (`compare`).
    Failure,
    /// Could not do what was asked: bad input, missing privilege, unreadable file.
    Error,
    /// `compare` (and `run --baseline`, `ab`) found no regression but could not have seen one:
    /// a tested metric had too few runs for any result to be significant after Holm's
    /// correction ("cannot detect at this n"), or no metric got a verdict at all. A gate that
    /// cannot see must not look green (docs/compare.md, docs/ci.md).
    Undetectable,
    /// Stopped by a signal (SIGINT, SIGTERM, SIGHUP, SIGQUIT: the number); completed results
    /// were kept. Exits 128 + the signal, as a shell reports it (130 for Ctrl-C).
    Interrupted(i32),
}

impl ExitCode {
    pub fn code(self) -> i32 {
        match self {
            ExitCode::Success => 0,
            ExitCode::Failure => 1,
            ExitCode::Error => 2,
            ExitCode::Undetectable => 3,
            ExitCode::Interrupted(sig) if (1..=64).contains(&sig) => 128 + sig,
            ExitCode::Interrupted(_) => 130,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_exit_as_a_shell_reports_them() {
        assert_eq!(ExitCode::Interrupted(libc::SIGINT).code(), 130);
        assert_eq!(ExitCode::Interrupted(libc::SIGHUP).code(), 129);
        assert_eq!(ExitCode::Interrupted(libc::SIGQUIT).code(), 131);
        assert_eq!(ExitCode::Interrupted(libc::SIGTERM).code(), 143);
        assert_eq!(ExitCode::Interrupted(0).code(), 130);
    }

    #[test]
    fn codes_are_distinct() {
        let all = [
            ExitCode::Success,
            ExitCode::Failure,
            ExitCode::Error,
            ExitCode::Undetectable,
            ExitCode::Interrupted(libc::SIGINT),
        ]
        .map(ExitCode::code);
        assert_eq!(all, [0, 1, 2, 3, 130]);
    }
}
