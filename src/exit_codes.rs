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
}
