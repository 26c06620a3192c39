//! Hot reload: the single writer of the list snapshot.
//!
//! One task owns the running configuration and is the only code that
//! stores a new [`Snapshot`]. It wakes on file changes (notify watches the
//! directories of the config file and of every local list, so editors that
//! save by rename and `sed -i` are caught; a directory missing or replaced
//! is watched anew within 5 seconds), on SIGHUP, on `POST
//! /api/reload`, and when a downloaded list changed. Bursts of file events
//! are debounced. Each rebuild runs on the blocking pool and is swapped in
//! whole; a list that fails to read keeps its previous entries, and an
//! invalid config keeps the running one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, DEFAULT_REFRESH, ListSource};
use crate::lists::{CachePaths, DownloadOutcome, ListStore, Snapshot};
use crate::metrics::Metrics;

/// Quiet time after the last file event before a rebuild starts: editors
/// write a file in several steps, and a checkout touches many files.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// How often the watched directories are checked: a directory that was
/// missing, or was replaced (deleted and made again, or renamed over),
/// is watched anew, and the lists re-read.
const REWATCH: Duration = Duration::from_secs(5);

/// Why a reload was asked for.
#[derive(Debug)]
pub enum Trigger {
    /// A watched file changed.
    Files,
    /// SIGHUP: re-read everything and download `url` lists again.
    Signal,
    /// `POST /api/reload`: like SIGHUP, and report the result.
    Api(oneshot::Sender<Result<String, String>>),
    /// A background download stored a new copy of a list.
    Downloaded,
}

/// Asks the reloader for a reload; cheap to clone.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    tx: mpsc::Sender<Trigger>,
}

impl ReloadHandle {
    /// Reloads now and returns a summary or the error that kept the old state.
    pub async fn reload(&self) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Trigger::Api(tx))
            .await
            .map_err(|_| "telesink is shutting down".to_string())?;
        rx.await
            .map_err(|_| "telesink is shutting down".to_string())?
    }

    /// Asks for a reload, not waiting for it (SIGHUP). Waits for room in
    /// the queue, if a burst of file changes filled it, rather than lose
    /// the refresh of the `url` lists that only a SIGHUP or the API asks.
    pub async fn signal(&self) {
        let _ = self.tx.send(Trigger::Signal).await;
    }
}

/// The writer task's state.
pub struct Reloader {
    /// The file the config came from; `None` for the embedded default.
    config_path: Option<PathBuf>,
    /// Its text as last read: a rebuild for an edited list re-reads the
    /// config too, but counts as a config reload only if it changed.
    config_text: Option<String>,
    /// The running configuration, shared with readers such as `explain`.
    config: Arc<ArcSwap<Config>>,
    store: Arc<ListStore>,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Trigger>,
    rx: mpsc::Receiver<Trigger>,
    watcher: Option<notify::RecommendedWatcher>,
    /// The directories to watch, each with the identity (device, inode)
    /// of the directory watched under that path, `None` while it cannot
    /// be watched (missing).
    watched_dirs: HashMap<PathBuf, Option<(u64, u64)>>,
    /// Absolute paths whose changes matter.
    watched_files: Arc<std::sync::Mutex<HashSet<PathBuf>>>,
    /// Paths removed or renamed since the last [`Self::rewatch`], as the
    /// watcher saw them: a watched directory among them is watched anew
    /// even if a new one took its inode number.
    removed: Arc<std::sync::Mutex<HashSet<PathBuf>>>,
    /// Cancels the background downloaders of the current configuration.
    downloads: CancellationToken,
    /// When the lists in use began to be read, before any watch was in
    /// place (see [`Reloader::first_build_started`]).
    first_build: Option<SystemTime>,
    http: reqwest::Client,
}

/// An HTTP client for list downloads: rustls with the ring provider and
/// the platform's trust store. Each download is bounded by the
/// `download_timeout` of the configuration at the time, not by the client.
pub fn http_client() -> reqwest::Client {
    // Installing the process-wide provider fails harmlessly if one is set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .user_agent(concat!("telesink/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

impl Reloader {
    /// A reloader for the running `config` whose lists are in `store`.
    pub fn new(
        config_path: Option<PathBuf>,
        config: Arc<ArcSwap<Config>>,
        store: Arc<ListStore>,
        metrics: Arc<Metrics>,
    ) -> (Self, ReloadHandle) {
        let (tx, rx) = mpsc::channel(16);
        let config_text = config_path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok());
        let me = Self {
            config_text,
            config_path,
            config,
            store,
            metrics,
            tx: tx.clone(),
            rx,
            watcher: None,
            watched_dirs: HashMap::new(),
            watched_files: Arc::new(std::sync::Mutex::new(HashSet::new())),
            removed: Arc::new(std::sync::Mutex::new(HashSet::new())),
            downloads: CancellationToken::new(),
            http: http_client(),
            first_build: None,
        };
        (me, ReloadHandle { tx })
    }

    /// The first build, made before this writer runs, began to read the
    /// files at `at`: a list or the config saved since (seconds, with a
    /// big list on a Pi) changed before the watches were in place, and is
    /// picked up by one more build as the writer starts.
    pub fn first_build_started(mut self, at: SystemTime) -> Self {
        self.first_build = Some(at);
        self
    }

    /// Whether a watched file was modified after `at`.
    fn changed_since(&self, at: SystemTime) -> bool {
        let files = self.watched_files.lock().unwrap_or_else(|e| e.into_inner());
        files.iter().any(|f| {
            std::fs::metadata(f)
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified > at)
        })
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(mut self, shutdown: CancellationToken) {
        self.watch();
        if self.first_build.is_some_and(|at| self.changed_since(at)) {
            tracing::info!(
                "a list or the config changed while the lists were first read; reading them again"
            );
            let _ = self.tx.try_send(Trigger::Files);
        }
        {
            let config = self.config.load();
            sweep_parts(&config.blocking.cache_dir(&config.base_dir));
        }
        self.start_downloads(&shutdown);
        let mut rewatch = tokio::time::interval(REWATCH);
        rewatch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let trigger = tokio::select! {
                t = self.rx.recv() => match t {
                    Some(t) => t,
                    None => return,
                },
                _ = rewatch.tick() => {
                    if self.rewatch() {
                        Trigger::Files
                    } else {
                        continue;
                    }
                }
                _ = shutdown.cancelled() => break,
            };
            let mut reply = None;
            let mut refresh_urls = false;
            match trigger {
                Trigger::Files | Trigger::Downloaded => {
                    // Debounce: wait until events stop for DEBOUNCE.
                    loop {
                        tokio::select! {
                            more = self.rx.recv() => match more {
                                Some(Trigger::Api(tx)) => { reply = Some(tx); refresh_urls = true; break }
                                Some(Trigger::Signal) => { refresh_urls = true; break }
                                Some(_) => continue,
                                None => return,
                            },
                            _ = tokio::time::sleep(DEBOUNCE) => break,
                            _ = shutdown.cancelled() => { self.downloads.cancel(); return }
                        }
                    }
                }
                Trigger::Signal => refresh_urls = true,
                Trigger::Api(tx) => {
                    reply = Some(tx);
                    refresh_urls = true;
                }
            }
            // A reload downloads every `url` list, each within
            // download_timeout: shutdown must not wait for that. Dropped
            // midway, a download removes its part file and leaves the copy
            // as it was.
            let result = tokio::select! {
                result = self.reload(refresh_urls, &shutdown) => result,
                () = shutdown.cancelled() => break,
            };
            match &result {
                Ok(summary) => tracing::info!("reloaded: {summary}"),
                Err(error) => tracing::error!(
                    "reload failed, still serving the previous configuration: {error}"
                ),
            }
            if let Some(tx) = reply {
                let _ = tx.send(result);
            }
        }
        self.downloads.cancel();
    }

    /// Re-reads the config (if from a file) and every list, and swaps in
    /// the new snapshot.
    async fn reload(
        &mut self,
        refresh_urls: bool,
        shutdown: &CancellationToken,
    ) -> Result<String, String> {
        let mut config = (**self.config.load()).clone();
        if let Some(path) = self.config_path.clone() {
            let text = std::fs::read_to_string(&path).ok();
            // A reload of the config: asked for, or the file changed.
            let counts = refresh_urls || text != self.config_text;
            self.config_text = text;
            let count = |result: &str| {
                if counts {
                    self.metrics
                        .config_reloads
                        .with_label_values(&[result])
                        .inc();
                }
                self.metrics
                    .config_last_reload_ok
                    .set(i64::from(result == "success"));
            };
            match Config::load(&path) {
                Ok(new) => {
                    count("success");
                    let restart = needs_restart(&config, &new);
                    if !restart.is_empty() {
                        tracing::warn!(
                            "changed settings take effect after a restart: {}",
                            restart.join(", ")
                        );
                    }
                    // Everything but [blocking] stays as the server was started.
                    let sources_changed = new.blocking.lists != config.blocking.lists
                        || new.blocking.allow != config.blocking.allow
                        || new.blocking.cache_dir != config.blocking.cache_dir;
                    // The downloaders hold the settings they were started
                    // with.
                    let downloads_changed = sources_changed
                        || new.blocking.download_timeout != config.blocking.download_timeout
                        || new.blocking.download_max_bytes != config.blocking.download_max_bytes;
                    config.blocking = new.blocking;
                    if sources_changed {
                        // Before the downloaders start, so a renamed list
                        // has its copy by then; on the blocking pool, as
                        // it copies whole lists.
                        let for_tidy = config.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            crate::lists::tidy_cache(&for_tidy);
                        })
                        .await;
                    }
                    if downloads_changed {
                        self.config.store(Arc::new(config.clone()));
                        self.start_downloads(shutdown);
                    }
                }
                Err(error) => {
                    count("failure");
                    // The lists may still have changed: rebuild them with
                    // the running config.
                    tracing::error!("{error}; keeping the running configuration");
                    if refresh_urls {
                        self.download_all(&config).await;
                    }
                    self.watch();
                    self.rebuild(config).await;
                    return Err(error.to_string());
                }
            }
        }
        if refresh_urls {
            self.download_all(&config).await;
        }
        self.config.store(Arc::new(config.clone()));
        // Before the lists are read: a symbolic link may point elsewhere
        // now, and an edit at its target while they are read is then seen.
        self.watch();
        let snapshot = self.rebuild(config).await;
        Ok(format!(
            "{}, built in {:.0?}",
            snapshot.summary(),
            snapshot.build_time
        ))
    }

    /// Builds and stores a snapshot for `config` on the blocking pool.
    async fn rebuild(&self, config: Config) -> Arc<Snapshot> {
        let previous = self.store.load_full();
        let old = previous.clone();
        let built = match tokio::task::spawn_blocking(move || {
            crate::lists::build(&config, Some(&previous))
        })
        .await
        {
            Ok(built) => built,
            // A bug, but not one to stop the list writer for: the lists in
            // use stay, and the next change is built again.
            Err(error) => {
                tracing::error!(%error, "the list build failed; keeping the lists in use");
                return old;
            }
        };
        publish(&self.metrics, &built);
        // Whatever caused the build: a reload, an edited list, a download,
        // or a broken config whose lists were rebuilt with the running one.
        crate::systemd::status(&format!("serving {}", built.summary()));
        self.store.store(built);
        self.store.load_full()
    }

    /// Downloads every `url` list now (SIGHUP and the API ask for fresh
    /// data), [`PARALLEL_DOWNLOADS`] at a time: the reload, its API reply
    /// and any list edit queued behind it wait for the slowest few, not
    /// for the sum of every list's download time. Dropped (at shutdown),
    /// it cancels the downloads still running.
    async fn download_all(&self, config: &Config) {
        let config = Arc::new(config.clone());
        let mut running = tokio::task::JoinSet::new();
        for list in config.blocking.lists.iter().chain(&config.blocking.allow) {
            let ListSource::Url(url) = list.resolved_source(&config.base_dir) else {
                continue;
            };
            if running.len() >= PARALLEL_DOWNLOADS {
                running.join_next().await;
            }
            let paths = CachePaths::new(
                &config.blocking.cache_dir(&config.base_dir),
                &list.name,
                &url,
            );
            let (http, metrics, config) = (self.http.clone(), self.metrics.clone(), config.clone());
            let name = list.name.clone();
            running.spawn(async move {
                fetch(&http, &metrics, &name, &url, &paths, &config).await;
            });
        }
        while running.join_next().await.is_some() {}
    }

    /// The files whose changes matter (the config file and every local
    /// list), each in its directory's canonical name, and where it points
    /// if it is a symbolic link.
    ///
    /// Directories by their canonical names: one reached under two names
    /// (through a symbolic link) is one inotify watch, which reports its
    /// events under one name only, and which unwatching either name would
    /// remove for both.
    fn wanted_files(&self) -> HashSet<PathBuf> {
        let config = self.config.load();
        let mut files = HashSet::new();
        let mut add = |p: &Path| {
            files.insert(in_canonical_dir(p));
            // A symbolic link's target changes where it is.
            if let Ok(target) = std::fs::canonicalize(p) {
                files.insert(target);
            }
        };
        if let Some(p) = &self.config_path {
            add(p);
        }
        for list in config.blocking.lists.iter().chain(&config.blocking.allow) {
            if let ListSource::File(p) = list.resolved_source(&config.base_dir) {
                add(&p);
            }
        }
        files
    }

    /// Watches the directories of the config file and of every local list.
    fn watch(&mut self) {
        let files = self.wanted_files();
        let dirs = parents(&files);
        *self.watched_files.lock().unwrap_or_else(|e| e.into_inner()) = files;
        if self.watcher.is_none() {
            let tx = self.tx.clone();
            let files = self.watched_files.clone();
            let removed = self.removed.clone();
            let watcher =
                notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                    // Events may have been lost (the kernel's queue
                    // overflowed under a burst of changes, or the watch
                    // failed): rebuild, as if every file had changed.
                    let event = match event {
                        Ok(event) if !event.need_rescan() => event,
                        _ => {
                            let _ = tx.try_send(Trigger::Files);
                            return;
                        }
                    };
                    if matches!(event.kind, notify::EventKind::Access(_)) {
                        return;
                    }
                    if matches!(
                        event.kind,
                        notify::EventKind::Remove(_)
                            | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                    ) {
                        removed
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend(event.paths.iter().cloned());
                    }
                    let files = files.lock().unwrap_or_else(|e| e.into_inner());
                    if event.paths.iter().any(|p| files.contains(p)) {
                        // A full channel already holds a pending reload.
                        let _ = tx.try_send(Trigger::Files);
                    }
                });
            match watcher {
                Ok(w) => self.watcher = Some(w),
                Err(error) => {
                    tracing::warn!(%error, "cannot watch files; reload with SIGHUP or POST /api/reload");
                    return;
                }
            }
        }
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let mut unwatched = false;
        self.watched_dirs.retain(|dir, _| {
            let keep = dirs.contains(dir);
            if !keep {
                let _ = watcher.unwatch(dir);
                unwatched = true;
            }
            keep
        });
        if unwatched {
            renew_watches(watcher, &mut self.watched_dirs);
        }
        for dir in dirs {
            if let std::collections::hash_map::Entry::Vacant(entry) = self.watched_dirs.entry(dir) {
                let watched = watch_dir(watcher, entry.key(), true);
                entry.insert(watched);
            }
        }
    }

    /// Watches anew each directory that could not be watched, or that is
    /// no longer the one watched under its path; `true` if any was, as
    /// its files may have changed unseen.
    fn rewatch(&mut self) -> bool {
        if self.watcher.is_none() {
            return false;
        }
        // A symbolic link to a directory pointed elsewhere: the files are
        // now in other directories.
        let dirs = parents(&self.wanted_files());
        if dirs.len() != self.watched_dirs.len()
            || dirs.iter().any(|d| !self.watched_dirs.contains_key(d))
        {
            self.watch();
            return true;
        }
        let Some(watcher) = self.watcher.as_mut() else {
            return false;
        };
        let removed = std::mem::take(&mut *self.removed.lock().unwrap_or_else(|e| e.into_inner()));
        let mut changed = false;
        let mut unwatched = false;
        for (dir, watched) in &mut self.watched_dirs {
            let now = identity(dir);
            if now == *watched && !removed.contains(dir) {
                continue;
            }
            let _ = watcher.unwatch(dir);
            unwatched = true;
            *watched = now.and_then(|_| watch_dir(watcher, dir, false));
            if watched.is_some() {
                tracing::info!(dir = %dir.display(), "watching this directory again");
                changed = true;
            }
        }
        if unwatched {
            renew_watches(watcher, &mut self.watched_dirs);
        }
        changed
    }

    /// (Re)starts one background downloader per `url` list.
    fn start_downloads(&mut self, shutdown: &CancellationToken) {
        self.downloads.cancel();
        self.downloads = shutdown.child_token();
        let config = self.config.load_full();
        for list in config.blocking.lists.iter().chain(&config.blocking.allow) {
            let ListSource::Url(url) = list.resolved_source(&config.base_dir) else {
                continue;
            };
            let refresh = list.refresh.unwrap_or(DEFAULT_REFRESH);
            let paths = CachePaths::new(
                &config.blocking.cache_dir(&config.base_dir),
                &list.name,
                &url,
            );
            let task = Downloader {
                name: list.name.clone(),
                url,
                paths,
                refresh,
                config: config.clone(),
                http: self.http.clone(),
                metrics: self.metrics.clone(),
                tx: self.tx.clone(),
            };
            tokio::spawn(task.run(self.downloads.clone()));
        }
    }
}

/// Sections outside `[blocking]` that differ, named for the log: they
/// are wired into listeners, the chain and the upstream pools at start.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    [
        ("[server]", old.server != new.server),
        ("[upstream]", old.upstream != new.upstream),
        ("[cache]", old.cache != new.cache),
        ("[http]", old.http != new.http),
        ("[metrics]", old.metrics != new.metrics),
        ("[[clients]]", old.clients != new.clients),
        ("[security]", old.security != new.security),
        ("[local]", old.local != new.local),
        ("[[forward]]", old.forward != new.forward),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}

/// Publishes a new snapshot's list metrics.
pub fn publish(metrics: &Metrics, snapshot: &Snapshot) {
    metrics.observe_lists(snapshot);
    for list in &snapshot.lists {
        let name = &*list.name;
        // Both series exist from the first load, so `increase()` sees the
        // first failure.
        let success = metrics
            .blocklist_reloads
            .with_label_values(&[name, "success"]);
        let failure = metrics
            .blocklist_reloads
            .with_label_values(&[name, "failure"]);
        // A url list's load is its download, counted by the downloader;
        // but a copy on disk that cannot be read fails its list here.
        if list.error.is_some() {
            failure.inc();
        } else if !matches!(list.source, ListSource::Url(_)) {
            success.inc();
        }
        let refresh = list
            .refresh
            .map_or(0, |r| i64::try_from(r.as_secs()).unwrap_or(i64::MAX));
        metrics
            .blocklist_refresh
            .with_label_values(&[name])
            .set(refresh);
        if let Some(at) = list.loaded_at {
            let secs = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            metrics
                .blocklist_last_success
                .with_label_values(&[name])
                .set(secs);
        }
    }
}

/// Watches `dir`; its identity if that worked. A failure is logged when
/// `loud` (the first try); later tries stay quiet until one works.
fn watch_dir(
    watcher: &mut notify::RecommendedWatcher,
    dir: &Path,
    loud: bool,
) -> Option<(u64, u64)> {
    let before = identity(dir);
    match watcher.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => before,
        Err(error) => {
            if loud {
                tracing::warn!(dir = %dir.display(), %error, "cannot watch this directory for changes; trying again every few seconds");
            }
            None
        }
    }
}

/// Watches every directory of `watched` that exists again, after an
/// unwatch. The kernel keeps one watch per directory whatever name it is
/// reached by, and notify's unwatch of one name removes it for all: a
/// directory renamed from one watched name to another, or reached under
/// two (a bind mount), lost its watch for good when the other name was
/// unwatched after it was watched. Watching a watched directory again
/// changes nothing.
fn renew_watches(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut HashMap<PathBuf, Option<(u64, u64)>>,
) {
    for (dir, identity) in watched.iter_mut() {
        if identity.is_some() {
            *identity = watch_dir(watcher, dir, false);
        }
    }
}

/// The device and inode of `dir`: another after it is deleted and made
/// again, or another directory is renamed over it.
fn identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// `p` in its directory's canonical name (symbolic links in the directory
/// part resolved, the file itself left as it is); as given, made absolute,
/// while the directory does not exist.
fn in_canonical_dir(p: &Path) -> PathBuf {
    let p = absolute(p);
    match (p.parent(), p.file_name()) {
        (Some(dir), Some(name)) => {
            std::fs::canonicalize(dir).map_or_else(|_| p.clone(), |d| d.join(name))
        }
        _ => p,
    }
}

/// The directories `files` are in.
fn parents(files: &HashSet<PathBuf>) -> HashSet<PathBuf> {
    files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect()
}

/// How many `url` lists a reload downloads at once: enough that a few
/// slow servers do not hold up the rest, few enough for a Pi's uplink.
const PARALLEL_DOWNLOADS: usize = 4;

/// How soon a failed download is tried again (unless the refresh period
/// is shorter).
const RETRY: Duration = Duration::from_secs(300);

/// Downloads one list and counts the result: `Some(true)` if a new copy
/// was stored, `Some(false)` if it was unchanged, `None` on failure.
async fn fetch(
    http: &reqwest::Client,
    metrics: &Metrics,
    name: &str,
    url: &str,
    paths: &CachePaths,
    config: &Config,
) -> Option<bool> {
    let result = crate::lists::download(
        http,
        url,
        paths,
        config.blocking.download_timeout,
        config.blocking.download_max_bytes,
    )
    .await;
    let label = if result.is_ok() { "success" } else { "failure" };
    metrics
        .blocklist_reloads
        .with_label_values(&[name, label])
        .inc();
    match result {
        Ok(DownloadOutcome::Updated) => {
            tracing::info!(list = name, "downloaded a new copy of {url}");
            Some(true)
        }
        Ok(DownloadOutcome::NotModified) => {
            tracing::debug!(list = name, "{url} is unchanged");
            let secs = crate::metrics::unix_now();
            metrics
                .blocklist_last_success
                .with_label_values(&[name])
                .set(secs);
            Some(false)
        }
        Err(error) => {
            tracing::warn!(
                list = name,
                "cannot refresh {url}: {error}; the previous copy stays in use"
            );
            None
        }
    }
}

/// Refreshes one `url` list on its schedule.
struct Downloader {
    name: String,
    url: String,
    paths: CachePaths,
    refresh: Duration,
    config: Arc<Config>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Trigger>,
}

impl Downloader {
    async fn run(self, stop: CancellationToken) {
        // A copy younger than the refresh period is used as it is; startup
        // never waits for the network. One that cannot be read (left by an
        // earlier run as another user) is downloaded again at once: the
        // new copy replaces it by a rename.
        let readable = crate::lists::readable_file(&self.paths.body);
        let age = std::fs::metadata(&self.paths.body)
            .and_then(|m| m.modified())
            .ok()
            .filter(|_| readable)
            .and_then(|t| t.elapsed().ok());
        let mut wait = match age {
            Some(age) if age < self.refresh => self.refresh - age,
            _ => Duration::ZERO,
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
            let result = tokio::select! {
                r = fetch(&self.http, &self.metrics, &self.name, &self.url, &self.paths, &self.config) => r,
                _ = stop.cancelled() => return,
            };
            if result == Some(true) {
                let _ = self.tx.send(Trigger::Downloaded).await;
            }
            wait = match result {
                Some(_) => self.refresh,
                None => self.refresh.min(RETRY),
            };
        }
    }
}

/// Removes the part files of downloads a killed process left in `dir` (a
/// download removes its own when it fails or is cancelled). Run once at
/// start, before any download of this process begins.
fn sweep_parts(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(".part") && entry.file_type().is_ok_and(|t| t.is_file())
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SIGHUP is not lost when file changes filled the queue: it waits
    /// for room and comes after them.
    #[tokio::test]
    async fn a_sighup_behind_a_full_queue_is_kept() {
        let config = Arc::new(ArcSwap::from_pointee(Config::default()));
        let store = Arc::new(ListStore::new(Snapshot::default()));
        let (mut reloader, handle) = Reloader::new(None, config, store, Arc::new(Metrics::new()));
        while reloader.tx.try_send(Trigger::Files).is_ok() {}
        let signal = handle.signal();
        tokio::pin!(signal);
        let waiting = tokio::select! {
            biased;
            () = &mut signal => false,
            () = std::future::ready(()) => true,
        };
        assert!(waiting, "the SIGHUP was dropped, not queued");
        // Room for one: it goes in, after the file changes.
        assert!(matches!(reloader.rx.recv().await, Some(Trigger::Files)));
        signal.await;
        let mut last = None;
        while let Ok(trigger) = reloader.rx.try_recv() {
            last = Some(trigger);
        }
        assert!(matches!(last, Some(Trigger::Signal)));
    }

    /// A reload downloads its `url` lists side by side, at most
    /// PARALLEL_DOWNLOADS at a time, and every one of them.
    #[tokio::test]
    async fn a_reload_downloads_lists_side_by_side() {
        use crate::lists::test_http::{Reply, http_stub};
        use std::sync::atomic::Ordering;
        let (addr, requests, most) = http_stub(|_| Reply {
            // Long enough for the others to start meanwhile.
            delay: Duration::from_millis(300),
            etag: None,
            body: "ads.example\n",
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let mut text = format!("[blocking]\ncache_dir = \"{}\"\n", dir.path().display());
        for n in 0..6 {
            text.push_str(&format!(
                "[[blocking.lists]]\nname = \"l{n}\"\nurl = \"http://{addr}/{n}.txt\"\n"
            ));
        }
        let config = Config::from_toml(&text, "test", dir.path()).unwrap();
        let store = Arc::new(ListStore::new(Snapshot::default()));
        let (reloader, _handle) = Reloader::new(
            None,
            Arc::new(ArcSwap::from_pointee(config.clone())),
            store,
            Arc::new(Metrics::new()),
        );
        reloader.download_all(&config).await;
        assert_eq!(requests.lock().unwrap().len(), 6);
        assert_eq!(
            most.load(Ordering::SeqCst),
            PARALLEL_DOWNLOADS,
            "requests at once"
        );
        for n in 0..6 {
            let url = format!("http://{addr}/{n}.txt");
            let paths = CachePaths::new(dir.path(), &format!("l{n}"), &url);
            assert_eq!(
                std::fs::read_to_string(paths.body).unwrap(),
                "ads.example\n"
            );
        }
    }

    /// A list saved while the first build read the lists (before any
    /// watch) is read again once the writer starts.
    #[tokio::test]
    async fn files_saved_during_the_first_build_are_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("block.txt");
        std::fs::write(&list, "a.test\n").unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "[[blocking.lists]]\nname = \"l\"\npath = \"block.txt\"\n",
        )
        .unwrap();
        let config = Config::load(&path).unwrap();
        let store = Arc::new(ListStore::new(crate::lists::build(&config, None)));
        let metrics = Arc::new(Metrics::new());
        let started = SystemTime::now();
        let (reloader, _handle) = Reloader::new(
            Some(path),
            Arc::new(ArcSwap::from_pointee(config)),
            store.clone(),
            metrics.clone(),
        );
        let reloader = reloader.first_build_started(started);
        // Saved during the build, before any watch (its time set, as file
        // times are coarse).
        std::fs::write(&list, "a.test\nb.test\n").unwrap();
        let file = std::fs::File::options().append(true).open(&list).unwrap();
        file.set_modified(started + Duration::from_secs(1)).unwrap();
        drop(file);
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(reloader.run(shutdown.clone()));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while store.load().blocked_domains() < 2 {
            assert!(std::time::Instant::now() < deadline, "not read again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        running.await.unwrap();
    }
}
