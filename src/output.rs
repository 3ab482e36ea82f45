//! What the user reads: progress, warnings and tables. Diagnostics go through `tracing`.
//!
//! Everything printed to stdout goes through [`out`] (macros [`outln!`](crate::outln) and
//! [`out!`](crate::out)): a closed stdout (`isobench compare A B | head -1`) ends the program
//! quietly with exit 0 instead of the panic of `println!`; during a run ([`keep_going_on_closed_stdout`])
//! printing just stops and the run finishes its teardown.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};
use indicatif::{ProgressBar, ProgressStyle};

use crate::model::availability::Availability;
use crate::model::results::{MetricSummary, Results, TierStatus};
use crate::model::tier::Tier;
use crate::stats::{Ratio, Summary};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static EXIT_ON_CLOSED_STDOUT: AtomicBool = AtomicBool::new(true);

/// From now on a closed stdout only stops printing (a run must finish its teardown).
pub fn keep_going_on_closed_stdout() {
    EXIT_ON_CLOSED_STDOUT.store(false, Ordering::SeqCst);
}

/// Whether a write to stdout found it closed.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::SeqCst)
}

/// Write to stdout. A closed pipe (EPIPE) exits 0 at once (any other write error: a line on
/// stderr and exit 2); during a run either only stops further printing.
pub fn out(args: std::fmt::Arguments<'_>) {
    if stdout_closed() {
        return;
    }
    let res = {
        let mut o = std::io::stdout().lock();
        o.write_fmt(args).and_then(|()| o.flush())
    };
    if let Err(e) = res {
        STDOUT_CLOSED.store(true, Ordering::SeqCst);
        let exit = EXIT_ON_CLOSED_STDOUT.load(Ordering::SeqCst);
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            if exit {
                std::process::exit(crate::exit_codes::ExitCode::Success.code());
            }
        } else {
            err(format_args!(
                "error: writing to stdout failed ({e}); nothing more is printed there"
            ));
            if exit {
                std::process::exit(crate::exit_codes::ExitCode::Error.code());
            }
        }
    }
}

/// Write a line to stderr, ignoring failure (a hung-up terminal must not panic the harness).
pub fn err(args: std::fmt::Arguments<'_>) {
    let mut e = std::io::stderr().lock();
    let _ = e.write_fmt(args).and_then(|()| e.write_all(b"\n"));
}

/// `println!` through [`out`]: never panics on a closed stdout.
#[macro_export]
macro_rules! outln {
    () => { $crate::output::out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::out(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` through [`out`]: never panics on a closed stdout.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::out(format_args!($($arg)*)) };
}

/// Format a value with a precision that suits its magnitude.
pub fn num(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "-".into()
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The median's interval as shown everywhere: "[1.20, 1.90]"; "[1.20, 1.90] at 93.8%" when its
/// coverage is below 95% (n = 5, [min, max]); the reason when there is none
/// ("no interval: n = 3 < 5").
pub fn ci_text(s: &Summary) -> String {
    match (s.ci(), s.ci_below_target()) {
        (Some((lo, hi)), None) => format!("[{}, {}]", num(lo), num(hi)),
        (Some((lo, hi)), Some(c)) => format!("[{}, {}] at {:.1}%", num(lo), num(hi), c * 100.0),
        (None, _) => s.ci_missing.clone().unwrap_or_else(|| "no interval".into()),
    }
}

/// A ratio's interval: "[1.10, 1.40]", or the reason there is none.
pub fn ratio_ci_text(r: &Ratio) -> String {
    match r.ci() {
        Some((lo, hi)) => format!("[{lo:.2}, {hi:.2}]"),
        None => format!("({})", r.ci_missing.as_deref().unwrap_or("no interval")),
    }
}

/// "1.23× [1.10, 1.40]" (or "1.23× (no interval: ...)")
pub fn ratio_cell(m: &MetricSummary) -> String {
    match &m.ratio_to_bare {
        Some(r) => format!("{:.2}× {}", r.ratio, ratio_ci_text(r)),
        None if m.tier == Tier::Bare => "1 (reference)".into(),
        None => "-".into(),
    }
}

/// The run table: per workload and metric, per tier: median, 95% CI, ratio to bare.
pub fn results_table(r: &Results) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "workload",
        "metric",
        "tier",
        "n",
        "median",
        "95% CI of median",
        "ratio to bare [95% CI]",
    ]);
    for m in sorted_summaries(r) {
        t.add_row(vec![
            Cell::new(&m.workload),
            Cell::new(format!("{} ({})", m.metric, m.unit)),
            Cell::new(m.tier.as_str()),
            Cell::new(m.stats.n).set_alignment(CellAlignment::Right),
            Cell::new(num(m.stats.median)).set_alignment(CellAlignment::Right),
            Cell::new(ci_text(&m.stats)).set_alignment(CellAlignment::Right),
            Cell::new(ratio_cell(m)).set_alignment(CellAlignment::Right),
        ]);
    }
    t.to_string()
}

/// The run's summaries in table order: workloads as the scenario lists them, startup metrics
/// first, tiers in spectrum order.
pub fn sorted_summaries(r: &Results) -> Vec<&MetricSummary> {
    let mut rows: Vec<&MetricSummary> = r.summaries.iter().collect();
    let wl_order = |w: &str| {
        r.scenario
            .workloads
            .iter()
            .position(|x| x.name() == w)
            .unwrap_or(usize::MAX)
    };
    rows.sort_by(|a, b| {
        (
            wl_order(&a.workload),
            &a.workload,
            metric_rank(&a.metric),
            &a.metric,
            a.tier,
        )
            .cmp(&(
                wl_order(&b.workload),
                &b.workload,
                metric_rank(&b.metric),
                &b.metric,
                b.tier,
            ))
    });
    rows
}

/// Startup metrics first, in launch order.
fn metric_rank(m: &str) -> u8 {
    match m {
        "launch_to_ready_ms" => 0,
        "launch_to_exit_ms" => 1,
        "teardown_ms" => 2,
        "launch_to_released_ms" => 3,
        _ => 4,
    }
}

/// Lines about tiers that did not run, or ran with notes.
pub fn tier_notes(r: &Results) -> Vec<String> {
    let mut v = vec![];
    for t in &r.tiers {
        match (&t.status, &t.availability) {
            (TierStatus::Skipped, Availability::Unavailable { reason, fix }) => {
                v.push(format!("skipped {}: {reason} (fix: {fix})", t.tier))
            }
            (TierStatus::Failed, _) => v.push(format!(
                "failed {}: {}",
                t.tier,
                t.failures
                    .last()
                    .map(|f| f.message.as_str())
                    .unwrap_or("no launch succeeded")
            )),
            _ => {}
        }
        if let Some(n) = &t.note {
            v.push(format!("note {}: {n}", t.tier));
        }
        if t.status == TierStatus::Ran && !t.failures.is_empty() {
            v.push(format!(
                "{} had {} failed launch(es); first: {}",
                t.tier,
                t.failures.len(),
                t.failures[0].message
            ));
        }
    }
    v
}

/// Progress of a run on stderr: on a terminal one updating line (bar, launches, round, the tier
/// and workload launching, elapsed, ETA); otherwise a plain line per round (at most one every
/// [`PLAIN_EVERY`], and at least one every [`PLAIN_AT_LEAST`] while launches go on), so a CI log shows where a run is without carriage returns. Quiet: nothing.
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    total: u64,
    rounds: u32,
    start: Instant,
    state: RefCell<ProgressState>,
}

#[derive(Default)]
struct ProgressState {
    pos: u64,
    round: u32,
    now: String,
    eta: Option<Duration>,
    last_plain: Option<(Instant, u32)>,
}

/// Fewest seconds between two plain progress lines.
pub const PLAIN_EVERY: Duration = Duration::from_secs(10);
/// Inside a long round, a plain line at the first launch after this long without one, so a
/// CI log never goes silent for a whole round.
pub const PLAIN_AT_LEAST: Duration = Duration::from_secs(60);

/// "1m05s", "42s".
pub fn duration_text(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

impl Progress {
    /// Where the run is: launch `pos` of `total` in round `round` (0-based) of `rounds`.
    fn line(&self, st: &ProgressState) -> String {
        let eta = match st.eta {
            Some(d) => format!("ETA {}", duration_text(d)),
            None => "ETA after the first round".into(),
        };
        format!(
            "round {}/{} · {}/{} launches · {} elapsed · {eta} · now {}",
            st.round + 1,
            self.rounds.max(1),
            st.pos,
            self.total,
            duration_text(self.start.elapsed()),
            st.now
        )
    }

    /// The next launch: its round, the arm's label, the workload, and the estimated wall time
    /// left (None while some arm has not launched yet).
    pub fn step(&self, round: u32, label: &str, workload: &str, eta: Option<Duration>) {
        let mut st = self.state.borrow_mut();
        st.round = round;
        st.now = format!("{label} {workload}");
        st.eta = eta;
        if let Some(b) = &self.bar {
            b.set_message(format!(
                "round {}/{} · {} · ETA {}",
                round + 1,
                self.rounds.max(1),
                st.now,
                eta.map(duration_text).unwrap_or_else(|| "?".into())
            ));
        } else if self.plain {
            let due = match st.last_plain {
                None => true,
                Some((at, r)) => {
                    (r != round && at.elapsed() >= PLAIN_EVERY) || at.elapsed() >= PLAIN_AT_LEAST
                }
            };
            if due {
                st.last_plain = Some((Instant::now(), round));
                err(format_args!("{}", self.line(&st)));
            }
        }
    }

    /// One launch done.
    pub fn inc(&self, n: u64) {
        self.state.borrow_mut().pos += n;
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// A line above the progress line (or a plain one).
    pub fn println(&self, line: impl AsRef<str>) {
        match &self.bar {
            Some(b) => b.println(line.as_ref()),
            None if self.plain => err(format_args!("{}", line.as_ref())),
            None => {}
        }
    }

    /// Remove the progress line; a plain log gets where the run ended.
    pub fn finish_and_clear(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        } else if self.plain {
            let st = self.state.borrow();
            err(format_args!(
                "measured: {}/{} planned launches in {} (time budgets may stop slow tiers early)",
                st.pos,
                self.total,
                duration_text(self.start.elapsed())
            ));
        }
    }
}

/// The progress of a run of `total` planned launches in `rounds` rounds (see [`Progress`]).
pub fn progress(total: u64, rounds: u32, quiet: bool) -> Progress {
    let tty = std::io::stderr().is_terminal();
    let bar = (!quiet && tty).then(|| {
        let pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} launches · {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.enable_steady_tick(Duration::from_millis(250));
        pb
    });
    Progress {
        bar,
        plain: !quiet && !tty,
        total,
        rounds,
        start: Instant::now(),
        state: RefCell::new(ProgressState::default()),
    }
}
