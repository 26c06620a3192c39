//! Runtime switches set through the admin API: blocking on and off (for a
//! while, or until turned back on) and flushing the cache.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Switches shared by the resolver chain and the HTTP API.
#[derive(Default)]
pub struct Controls {
    /// Blocking paused from the API (the config's `enabled` still applies).
    paused: AtomicBool,
    /// Bumped on every change, so a timed pause that was overridden does
    /// not turn blocking back on later.
    generation: AtomicU64,
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
        self.paused.load(Ordering::Relaxed)
    }

    /// Pauses or resumes blocking; a pause with `for_` ends by itself.
    pub fn set_paused(self: &Arc<Self>, paused: bool, for_: Option<Duration>) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.paused.store(paused, Ordering::SeqCst);
        if let (true, Some(d)) = (paused, for_) {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                // Only if nothing changed the switch meanwhile.
                if me.generation.load(Ordering::SeqCst) == generation {
                    me.paused.store(false, Ordering::SeqCst);
                    tracing::info!("blocking resumed after the timed pause");
                }
            });
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
