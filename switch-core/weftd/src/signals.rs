//! `SIGTERM`/`SIGINT` (stop) and `SIGHUP` (reload) as a channel the main loop waits on.
//!
//! `signal-hook`'s [`Signals`] iterator runs on a thread of its own and forwards each
//! signal as a [`Signal`] on a crossbeam channel, so the main thread can `select!` on
//! signals and anything else it waits for. Signal handlers themselves do nothing but
//! wake that thread (signal-hook's self-pipe), which keeps them async-signal-safe.
//!
//! A second `SIGTERM` or `SIGINT` while a clean stop is under way ends the process at
//! once (exit status 1), for the operator whose clean stop hangs.

use std::io;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, unbounded};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::flag;
use signal_hook::iterator::{Handle, Signals};

/// What a signal asks of `weftd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// `SIGTERM` or `SIGINT`: stop cleanly. Carries the signal's name.
    Stop(&'static str),
    /// `SIGHUP`: read the configuration file again.
    Reload,
}

/// The installed handlers and the thread that forwards them. Dropping it stops the
/// thread (the handlers stay installed and ignore further signals).
#[derive(Debug)]
pub struct SignalListener {
    rx: Receiver<Signal>,
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl SignalListener {
    /// Installs handlers for `SIGTERM`, `SIGINT` and `SIGHUP` and starts forwarding.
    pub fn install() -> io::Result<SignalListener> {
        // First signal: sets the flag (and is forwarded below); second: exit(1).
        let stopping = Arc::new(AtomicBool::new(false));
        for sig in [SIGTERM, SIGINT] {
            flag::register_conditional_shutdown(sig, 1, Arc::clone(&stopping))?;
            flag::register(sig, Arc::clone(&stopping))?;
        }
        let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
        let handle = signals.handle();
        let (tx, rx) = unbounded();
        let thread = std::thread::Builder::new()
            .name("weft-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    let event = match sig {
                        SIGTERM => Signal::Stop("SIGTERM"),
                        SIGINT => Signal::Stop("SIGINT"),
                        _ => Signal::Reload,
                    };
                    if tx.send(event).is_err() {
                        break;
                    }
                }
            })?;
        Ok(SignalListener {
            rx,
            handle,
            thread: Some(thread),
        })
    }

    /// The channel of signals, for `crossbeam_channel::select!`.
    pub fn receiver(&self) -> &Receiver<Signal> {
        &self.rx
    }

    /// Waits for the next signal.
    pub fn recv(&self) -> Option<Signal> {
        self.rx.recv().ok()
    }
}

impl Drop for SignalListener {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn hup_is_a_reload() {
        let l = SignalListener::install().unwrap();
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
        assert_eq!(
            l.receiver().recv_timeout(Duration::from_secs(5)),
            Ok(Signal::Reload)
        );
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
        assert_eq!(l.recv(), Some(Signal::Reload));
        drop(l);
    }
}
