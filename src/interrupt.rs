//! The signals that end a session (SIGINT, SIGTERM, SIGHUP from a dropped ssh session, SIGQUIT)
//! all do the same: the first asks the run to stop after the launch in flight, keep what
//! completed (`interrupted: true`) and tear down; a second one, while teardown runs, hurries it:
//! the [`Interrupt::hurry`] flag is set, and if teardown has not ended after [`HURRY_GRACE`] the
//! process exits at once with what is left still listed in the state ledger for
//! `isobench cleanup`. SIGPIPE stays ignored (Rust's default), so a closed stdout never kills a
//! run mid-teardown (see `output::out`).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};

/// The signals that end a session.
pub const SIGNALS: [i32; 4] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT];

/// How long teardown may still run after a second signal before the process exits anyway.
pub const HURRY_GRACE: Duration = Duration::from_secs(3);

/// Flags set by the signal thread, read by the runner and the backends.
#[derive(Debug, Clone)]
pub struct Interrupt {
    /// Set by the first signal: stop launching, keep the results, tear down.
    pub cancel: Arc<AtomicBool>,
    /// Set by a second signal: teardown should skip waiting.
    pub hurry: Arc<AtomicBool>,
    /// The first signal, as the signal thread saw it.
    signal: Arc<AtomicI32>,
    /// The latest signal, stored by the handler itself (so it is known before the thread runs).
    last: Arc<AtomicUsize>,
}

impl Interrupt {
    /// Install the handlers. `leftovers` says where what a hurried exit leaves is recorded
    /// (e.g. the state directory), for the message printed then.
    pub fn install(leftovers: String) -> std::io::Result<Interrupt> {
        let i = Interrupt {
            cancel: Arc::new(AtomicBool::new(false)),
            hurry: Arc::new(AtomicBool::new(false)),
            signal: Arc::new(AtomicI32::new(0)),
            last: Arc::new(AtomicUsize::new(0)),
        };
        // The flag is also set inside the handler itself, so a launch in flight sees it at once.
        for sig in SIGNALS {
            signal_hook::flag::register(sig, i.cancel.clone())?;
            let n = usize::try_from(sig).expect("signal numbers are small and positive");
            signal_hook::flag::register_usize(sig, i.last.clone(), n)?;
        }
        let mut signals = signal_hook::iterator::Signals::new(SIGNALS)?;
        let t = i.clone();
        std::thread::Builder::new()
            .name("isobench-signals".into())
            .spawn(move || {
                let mut seen = 0u32;
                for sig in signals.forever() {
                    seen += 1;
                    if seen == 1 {
                        t.signal.store(sig, Ordering::SeqCst);
                        crate::output::err(format_args!(
                            "\n{}: stopping after the launch in flight, keeping the completed results and tearing down (a second signal hurries the teardown)",
                            name(sig)
                        ));
                        continue;
                    }
                    if seen == 2 {
                        t.hurry.store(true, Ordering::SeqCst);
                        let first = t.signal();
                        let leftovers = leftovers.clone();
                        crate::output::err(format_args!(
                            "{}: hurrying the teardown; exiting in at most {} s",
                            name(sig),
                            HURRY_GRACE.as_secs()
                        ));
                        std::thread::spawn(move || {
                            std::thread::sleep(HURRY_GRACE);
                            crate::output::err(format_args!(
                                "exiting before the teardown finished: the results written so far are kept; whatever was not removed is still listed in {leftovers}: run `isobench cleanup`"
                            ));
                            std::process::exit(128 + first.unwrap_or(SIGINT));
                        });
                    }
                }
            })?;
        Ok(i)
    }

    /// The first signal received, if any.
    pub fn signal(&self) -> Option<i32> {
        match self.signal.load(Ordering::SeqCst) {
            0 => match self.last.load(Ordering::SeqCst) {
                0 => None,
                n => i32::try_from(n).ok(),
            },
            s => Some(s),
        }
    }

    /// Whether a second signal asked to hurry the teardown.
    pub fn hurry(&self) -> bool {
        self.hurry.load(Ordering::SeqCst)
    }
}

fn name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        SIGQUIT => "SIGQUIT",
        _ => "signal",
    }
}
