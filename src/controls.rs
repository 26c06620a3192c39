//! Runtime switches set through the admin API: blocking on and off (for a
//! while, or until turned back on) and flushing the cache.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::task::AbortHandle;

/// Switches shared by the resolver chain and the HTTP API.
#[derive(Default)]
pub struct Controls {
    /// Bit 0: blocking paused from the API (the config's `enabled` still
    /// applies). The bits above count the changes, so the timer of a timed
    /// pause that was overridden does not turn blocking back on later. One
    /// word: the query path reads it with one load, and a change and its
    /// count are never seen apart.
    state: AtomicU64,
    /// The timer of the timed pause in force. Changes are made holding
    /// it, so two at once cannot interleave.
    timer: Mutex<Option<AbortHandle>>,
    /// Empties the answer cache; set by the chain that owns it.
    flush: OnceLock<Box<dyn Fn() -> usize + Send + Sync>>,
}

impl std::fmt::Debug for Controls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controls")
            .field("paused", &self.paused())
            .finish_non_exhaustive()
    }
}

impl Controls {
    /// Whether blocking is paused from the API.
    pub fn paused(&self) -> bool {
        self.state.load(Ordering::Relaxed) & 1 == 1
    }

    /// Pauses or resumes blocking; a pause with `for_` ends by itself,
    /// unless another change comes first. A timed pause needs a tokio
    /// runtime for its timer; without one it is refused (and logged)
    /// rather than made a pause without end.
    pub fn set_paused(self: &Arc<Self>, paused: bool, for_: Option<Duration>) {
        let runtime = tokio::runtime::Handle::try_current();
        if paused && for_.is_some() && runtime.is_err() {
            tracing::error!("a timed pause needs a tokio runtime for its timer; not paused");
            return;
        }
        let mut timer = self.timer.lock().unwrap_or_else(PoisonError::into_inner);
        // A timed pause's timer has nothing left to do once the switch
        // changes; a sleeping task per `for=1y` would pile up.
        if let Some(old) = timer.take() {
            old.abort();
        }
        let set = (((self.state.load(Ordering::SeqCst) >> 1) + 1) << 1) | u64::from(paused);
        self.state.store(set, Ordering::SeqCst);
        if let (true, Some(d), Ok(runtime)) = (paused, for_, runtime) {
            let me = Arc::clone(self);
            let task = runtime.spawn(async move {
                tokio::time::sleep(d).await;
                let mut timer = me.timer.lock().unwrap_or_else(PoisonError::into_inner);
                // Only if nothing changed the switch meanwhile.
                if me
                    .state
                    .compare_exchange(set, set & !1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    *timer = None;
                    tracing::info!("blocking resumed after the timed pause");
                }
            });
            *timer = Some(task.abort_handle());
        }
    }

    /// Registers the cache's flush function (once).
    pub fn set_flush(&self, flush: impl Fn() -> usize + Send + Sync + 'static) {
        let _ = self.flush.set(Box::new(flush));
    }

    /// Empties the cache; returns how many answers were dropped.
    pub fn flush_cache(&self) -> usize {
        self.flush.get().map_or(0, |f| f())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timed_pause_without_a_runtime_is_refused_not_made_endless() {
        let c = Arc::new(Controls::default());
        c.set_paused(true, Some(Duration::from_millis(1)));
        assert!(!c.paused());
        // A pause without end needs no timer.
        c.set_paused(true, None);
        assert!(c.paused());
    }

    #[tokio::test]
    async fn a_timed_pause_ends_and_a_resume_cancels_it() {
        let c = Arc::new(Controls::default());
        c.set_paused(true, Some(Duration::from_millis(50)));
        assert!(c.paused());
        c.set_paused(false, None);
        assert!(!c.paused());
        assert!(c.timer.lock().unwrap().is_none(), "the old timer is gone");
        // A pause with no end outlives an earlier timed one.
        c.set_paused(true, Some(Duration::from_millis(10)));
        c.set_paused(true, None);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(c.paused());
        c.set_paused(true, Some(Duration::from_millis(10)));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while c.paused() {
            assert!(tokio::time::Instant::now() < deadline, "never resumed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
