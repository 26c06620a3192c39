//! Telling systemd how the service is doing: readiness, a status line and
//! the watchdog (`Type=notify`, `WatchdogSec=` in
//! `deploy/systemd/telesink.service`).
//!
//! - [`ready`] is sent once the sockets are bound and the lists loaded, so
//!   units ordered after telesink (`nss-lookup.target`) wait until it
//!   answers, and `systemctl start` returns only then (or reports a failed
//!   start).
//! - [`status`] sets the line `systemctl status` shows: how many lists and
//!   blocked domains are served, updated after each reload.
//! - [`watchdog`] tells systemd, every half of `WatchdogSec`, that telesink
//!   still serves. A hung process is then killed and restarted instead of
//!   leaving the whole network without DNS. The ping runs on the main
//!   runtime (TCP, HTTP, reloads), and is sent only while every UDP receive
//!   thread shows a recent [`Heartbeat`]: a thread stuck in a loop or a
//!   deadlock stops the pings even though the rest still runs.
//!
//! Outside systemd (no `NOTIFY_SOCKET`, as in Docker and the tests) each of
//! these does nothing.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::throttle::Throttle;

/// When a thread last ran its timers, in milliseconds since `epoch`.
///
/// A UDP receive thread beats a few times a second from a timer task on
/// its own runtime ([`crate::udp`]); the beats stop when that runtime
/// stops turning, whatever the reason.
#[derive(Debug, Clone)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeat {
    /// A heartbeat that has just beaten.
    pub fn new() -> Self {
        let beat = Self(Arc::new(AtomicU64::new(0)));
        beat.beat();
        beat
    }

    /// Records that the thread is running now.
    pub fn beat(&self) {
        self.0.store(millis(Instant::now()), Ordering::Relaxed);
    }

    /// How long ago the last beat was, as of `now`.
    pub fn age(&self, now: Instant) -> Duration {
        Duration::from_millis(millis(now).saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

/// The moment heartbeats count from (the first use).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_millis()).unwrap_or(u64::MAX)
}

/// Tells systemd that telesink serves, with `status` as its status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Sets the status line `systemctl status` shows; nothing once stopping
/// (a reload finishing then must not say "serving" again).
pub fn status(status: &str) {
    let stopping = STOPPING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !*stopping {
        send(&[NotifyState::Status(status)]);
    }
}

/// Set by [`stopping`]; held while a status is sent, so none is sent
/// after STOPPING.
static STOPPING: std::sync::Mutex<bool> = std::sync::Mutex::new(false);

/// Tells systemd that telesink is stopping (after SIGTERM).
pub fn stopping() {
    let mut stopping = STOPPING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *stopping = true;
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(state: &[NotifyState<'_>]) {
    // A failure here is a broken NOTIFY_SOCKET, and would repeat with
    // every watchdog ping: say so once a minute at most.
    static FAILED: OnceLock<Throttle> = OnceLock::new();
    if let Err(error) = sd_notify::notify(state)
        && let Some(suppressed) = FAILED
            .get_or_init(|| Throttle::new(Duration::from_secs(60)))
            .ready()
    {
        tracing::warn!(%error, suppressed, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// How often the watchdog is pinged and how old a heartbeat may be, for
/// systemd's `WATCHDOG_USEC`; `None` when systemd expects no pings.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|period| !period.is_zero())
}

/// Pings systemd's watchdog every half `period` while every heartbeat in
/// `beats` (named) is younger than that half (but at least a second: the
/// beats come every 250 ms), until `shutdown`.
pub async fn watchdog(
    period: Duration,
    beats: Vec<(String, Heartbeat)>,
    shutdown: CancellationToken,
) {
    let every = period / 2;
    let max_age = every.max(Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stalled_before = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match stalled(beats.iter().map(|(_, beat)| beat), max_age, Instant::now()) {
            None => {
                if stalled_before {
                    tracing::info!("every UDP receive thread runs again");
                    stalled_before = false;
                }
                send(&[NotifyState::Watchdog]);
            }
            Some((thread, age)) => {
                if !stalled_before {
                    let thread = &beats[thread].0;
                    tracing::error!(
                        "UDP receive thread {thread} has not run for {age:.1?}; \
                         no longer pinging systemd's watchdog, which restarts telesink \
                         within WatchdogSec ({period:?}) unless the thread recovers"
                    );
                    stalled_before = true;
                }
            }
        }
    }
}

/// The first heartbeat older than `max_age` at `now`: its index and age.
fn stalled<'a>(
    beats: impl IntoIterator<Item = &'a Heartbeat>,
    max_age: Duration,
    now: Instant,
) -> Option<(usize, Duration)> {
    beats
        .into_iter()
        .map(|beat| beat.age(now))
        .enumerate()
        .find(|(_, age)| *age > max_age)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_that_stops_is_found() {
        let (running, stuck) = (Heartbeat::new(), Heartbeat::new());
        let beats = [running.clone(), stuck.clone()];
        let max_age = Duration::from_secs(1);
        let start = Instant::now();
        assert_eq!(stalled(&beats, max_age, start), None);
        // Two seconds later, only the first thread has beaten meanwhile.
        let later = start + Duration::from_secs(2);
        running.0.store(millis(later), Ordering::Relaxed);
        let (thread, age) = stalled(&beats, max_age, later).expect("stalled");
        assert_eq!(thread, 1);
        assert!(age >= Duration::from_secs(2), "{age:?}");
        // It recovers.
        stuck.0.store(millis(later), Ordering::Relaxed);
        assert_eq!(stalled(&beats, max_age, later), None);
        // A clock read before a beat (another thread beat in between)
        // is no age at all, not an underflow.
        assert_eq!(stuck.age(start), Duration::ZERO);
    }
}
