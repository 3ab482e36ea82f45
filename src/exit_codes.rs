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
    /// Stopped by SIGINT/SIGTERM; completed results were kept.
    Interrupted,
}

impl ExitCode {
    pub fn code(self) -> i32 {
        match self {
            ExitCode::Success => 0,
            ExitCode::Failure => 1,
            ExitCode::Error => 2,
            ExitCode::Interrupted => 130,
        }
    }
}
