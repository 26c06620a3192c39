//! Where list texts come from: files, the builtin lists, and downloads
//! kept on disk.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;

use super::snapshot::{ListInput, ListKind, ListText, MAX_LINE};
use crate::config::{Config, ListConfig, ListSource};

/// Reads every configured list, block lists first (blocking I/O).
pub fn read_all(config: &Config) -> Vec<ListInput> {
    let b = &config.blocking;
    b.lists
        .iter()
        .map(|l| (l, ListKind::Block))
        .chain(b.allow.iter().map(|l| (l, ListKind::Allow)))
        .map(|(list, kind)| read_list(list, kind, config))
        .collect()
}

/// Reads one list: a file, a builtin, or the last downloaded copy of a URL
/// (an empty list until the first download completes).
pub fn read_list(list: &ListConfig, kind: ListKind, config: &Config) -> ListInput {
    let source = list.resolved_source(&config.base_dir);
    let (origin, text, loaded_at) = match &source {
        ListSource::File(path) => match open(path) {
            Ok(file) => (
                path.display().to_string(),
                Ok(ListText::File(file)),
                Some(SystemTime::now()),
            ),
            Err(e) => (path.display().to_string(), Err(e.to_string()), None),
        },
        ListSource::Builtin(name) => match (super::builtin(name), super::builtin_path(name)) {
            (Some(text), Some(path)) => (
                format!("builtin:{name} ({path})"),
                Ok(ListText::Memory(Cow::Borrowed(text))),
                Some(SystemTime::now()),
            ),
            _ => (
                format!("builtin:{name}"),
                Err("no such builtin list".into()),
                None,
            ),
        },
        ListSource::Url(url) => {
            let paths = CachePaths::new(
                &config.blocking.cache_dir(&config.base_dir),
                &list.name,
                url,
            );
            let origin = format!("{url} (cached at {})", paths.body.display());
            match open(&paths.body) {
                Ok(file) => {
                    let fetched = file.metadata().and_then(|m| m.modified()).ok();
                    (origin, Ok(ListText::File(file)), fetched)
                }
                // Not downloaded yet: empty until the first download lands.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    (origin, Ok(ListText::Memory(Cow::Borrowed(""))), None)
                }
                Err(e) => (origin, Err(e.to_string()), None),
            }
        }
    };
    let refresh = matches!(source, ListSource::Url(_))
        .then(|| list.refresh.unwrap_or(crate::config::DEFAULT_REFRESH));
    ListInput {
        name: list.name.clone(),
        kind,
        source,
        origin,
        text,
        loaded_at,
        refresh,
    }
}

/// Opens a list file for reading during the build. The open file is read
/// as it was when opened even if it is replaced meanwhile (editors and
/// downloads write a new file and rename it over the old one).
fn open(path: &Path) -> std::io::Result<File> {
    // Opened without blocking (a named pipe would block the open, and the
    // single list writer with it), then checked for what it is: a device
    // (/dev/zero) would be read forever. O_NONBLOCK changes nothing for a
    // regular file.
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    let kind = file.metadata()?.file_type();
    if kind.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "is a directory",
        ));
    }
    if !kind.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Whether `path` is a regular file this process can read, found out
/// without blocking on whatever else it may be.
pub(crate) fn readable_file(path: &Path) -> bool {
    open(path).is_ok()
}

/// The files a downloaded list is kept in.
#[derive(Debug, Clone)]
pub struct CachePaths {
    /// The list text.
    pub body: PathBuf,
    /// `etag:` and `last-modified:` of the copy, for conditional requests.
    pub meta: PathBuf,
}

impl CachePaths {
    /// Paths for list `name` from `url`. The URL's hash is part of the file
    /// name, so pointing a list at another URL never serves the old copy.
    pub fn new(dir: &Path, name: &str, url: &str) -> Self {
        let stem = format!("{name}-{}", url_hash(url));
        Self {
            body: dir.join(format!("{stem}.list")),
            meta: dir.join(format!("{stem}.meta")),
        }
    }
}

/// The 16 hex digits of `url` in its copy's file name: FNV-1a, stable
/// across builds and platforms, unlike std's hasher.
fn url_hash(url: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in url.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The mark [`tidy_cache`] leaves beside a copy no list uses.
fn unused_mark(body: &Path) -> PathBuf {
    body.with_extension("unused")
}

/// Tidies the directory of `config`'s downloaded lists (blocking I/O):
///
/// - a `url` list without a copy gets one of the newest copy that no
///   configured list uses and that came from the same URL, so a list
///   renamed in the config keeps blocking until its next download instead
///   of going empty;
/// - a copy that no configured list uses is marked (`NAME-HASH.unused`);
///   one marked for a week and not refreshed for as long is
///   removed with its validators (a list taken out of the config, or
///   pointed at another URL), so the directory does not fill with them
///   over the years. Used again, it loses its mark.
///
/// Copying rather than moving, and the grace period, spare another
/// instance that shares the directory (the default one, for two runs as
/// the same user: it refreshes its copies) and a list taken out for a
/// day. A copy never replaces a file: a download that lands meanwhile
/// wins. Only files named as [`CachePaths`] names them are touched;
/// failures are logged.
pub fn tidy_cache(config: &Config) {
    let dir = config.blocking.cache_dir(&config.base_dir);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    // The copies of the configured url lists, with their URL hashes.
    let in_use: Vec<(CachePaths, String)> = config
        .blocking
        .lists
        .iter()
        .chain(&config.blocking.allow)
        .filter_map(|list| match list.resolved_source(&config.base_dir) {
            ListSource::Url(url) => Some((CachePaths::new(&dir, &list.name, &url), url_hash(&url))),
            _ => None,
        })
        .collect();
    let used = |path: &Path| {
        in_use
            .iter()
            .any(|(p, _)| p.body == path || p.meta == path || unused_mark(&p.body) == path)
    };
    // Bodies no list uses (URL hash, path), and their other files.
    let mut unused: Vec<(String, PathBuf)> = Vec::new();
    let mut others: Vec<PathBuf> = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some((hash, ext)) = cache_file_name(&name) else {
            continue;
        };
        if used(&path) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        match ext {
            "list" => unused.push((hash.to_string(), path)),
            _ => others.push(path),
        }
    }
    let age = |path: &Path| {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
    };
    for (paths, hash) in &in_use {
        // Used again: no longer on its way out.
        let _ = std::fs::remove_file(unused_mark(&paths.body));
        if paths.body.exists() {
            continue;
        }
        let Some((_, old)) = unused
            .iter()
            .filter(|(h, p)| h == hash && readable_file(p))
            .min_by_key(|(_, p)| age(p).unwrap_or(Duration::MAX))
        else {
            continue;
        };
        // The body, then its validators: a body without them is
        // downloaded in full at the next check.
        match copy_new(old, &paths.body) {
            Ok(()) => {
                let _ = copy_new(&old.with_extension("meta"), &paths.meta);
                tracing::info!(from = %old.display(), to = %paths.body.display(), "a renamed list keeps its downloaded copy");
            }
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => {
                tracing::warn!(file = %old.display(), %error, "cannot copy this copy for a renamed list; it is downloaded again");
            }
        }
    }
    for (_, body) in &unused {
        let mark = unused_mark(body);
        let Some(marked) = age(&mark) else {
            if let Err(error) = File::create(&mark) {
                tracing::warn!(file = %mark.display(), %error, "cannot mark a downloaded copy no list uses");
            }
            continue;
        };
        if marked < UNUSED_KEPT || age(body).is_none_or(|a| a < UNUSED_KEPT) {
            continue;
        }
        match std::fs::remove_file(body) {
            Ok(()) => {
                let _ = std::fs::remove_file(body.with_extension("meta"));
                let _ = std::fs::remove_file(&mark);
                tracing::info!(file = %body.display(), "removed a downloaded copy no list has used for a week");
            }
            Err(error) => {
                tracing::warn!(file = %body.display(), %error, "cannot remove a downloaded copy no list uses")
            }
        }
    }
    // Validators and marks whose copy is gone.
    for path in others {
        if !path.with_extension("list").exists() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// How long a downloaded copy that no configured list uses is kept.
const UNUSED_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Copies `from` to `to`, which must not exist, keeping its modification
/// time (the copy's age decides when its list is next downloaded). By way
/// of a part file (swept at start if left by a crash), linked in place
/// rather than renamed: a file that appeared at `to` meanwhile (a
/// download's) is kept, and the copy dropped with `AlreadyExists`.
fn copy_new(from: &Path, to: &Path) -> std::io::Result<()> {
    let modified = std::fs::metadata(from)?.modified()?;
    let part = to.with_extension(format!("copy.{:08x}.part", rand::random::<u32>()));
    let copied = std::fs::copy(from, &part).and_then(|_| {
        let file = File::options().append(true).open(&part)?;
        file.set_modified(modified)?;
        file.sync_all()?;
        std::fs::hard_link(&part, to)
    });
    let _ = std::fs::remove_file(&part);
    copied
}

/// The URL hash and extension (`list`, `meta` or `unused`) of a file name
/// that [`CachePaths::new`] or [`tidy_cache`] makes:
/// `NAME-HHHHHHHHHHHHHHHH.list`.
fn cache_file_name(name: &str) -> Option<(&str, &str)> {
    let (stem, ext) = name.rsplit_once('.')?;
    if !["list", "meta", "unused"].contains(&ext) {
        return None;
    }
    let (list, hash) = stem.rsplit_once('-')?;
    let ok = !list.is_empty()
        && hash.len() == 16
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then_some((hash, ext))
}

/// What a download did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadOutcome {
    /// A new copy was stored.
    Updated,
    /// The server said the copy on disk is current (304).
    NotModified,
}

/// The lock of one cached copy (by its body's path).
///
/// A list's scheduled download and one a reload asks for (SIGHUP, the
/// API) may start together. Each writes its own part file, but their
/// renames of the body and of the validators could interleave and leave
/// one response's ETag beside the other's text; so they take turns, and
/// the second one's conditional request usually costs a 304.
fn copy_lock(body: &Path) -> Arc<tokio::sync::Mutex<()>> {
    type Locks = Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>;
    static LOCKS: OnceLock<Locks> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Locks::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(lock) = locks.get(body).and_then(Weak::upgrade) {
        return lock;
    }
    // Locks nobody holds any more go: a list pointed at another URL gets
    // new paths, and the map must not grow with every change.
    locks.retain(|_, lock| lock.strong_count() > 0);
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    locks.insert(body.to_path_buf(), Arc::downgrade(&lock));
    lock
}

/// Downloads `url` into `paths` with a conditional GET, at most `max_bytes`
/// and within `timeout` (after any download of the same copy already
/// running). The copy on disk is replaced only by a complete, successful
/// download (written aside, then renamed).
pub async fn download(
    client: &reqwest::Client,
    url: &str,
    paths: &CachePaths,
    timeout: Duration,
    max_bytes: u64,
) -> Result<DownloadOutcome, String> {
    let lock = copy_lock(&paths.body);
    let _turn = lock.lock().await;
    let run = async {
        let mut request = client.get(url);
        // Validators only for a copy that can be read: a 304 would keep
        // one that cannot.
        if readable_file(&paths.body)
            && let Ok(meta) = tokio::fs::read_to_string(&paths.meta).await
        {
            for line in meta.lines() {
                if let Some(v) = line.strip_prefix("etag: ") {
                    request = request.header(reqwest::header::IF_NONE_MATCH, v);
                } else if let Some(v) = line.strip_prefix("last-modified: ") {
                    request = request.header(reqwest::header::IF_MODIFIED_SINCE, v);
                }
            }
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            // Touch the copy so its age shows when it was last confirmed
            // (opened without blocking, as anything but a regular file
            // would have sent no validators).
            use std::os::unix::fs::OpenOptionsExt;
            let _ = File::options()
                .append(true)
                .custom_flags(nix::libc::O_NONBLOCK)
                .open(&paths.body)
                .and_then(|f| f.set_modified(SystemTime::now()));
            return Ok(DownloadOutcome::NotModified);
        }
        if !status.is_success() {
            return Err(format!("server answered {status}"));
        }
        if response.content_length().is_some_and(|n| n > max_bytes) {
            return Err(format!("larger than download_max_bytes ({max_bytes})"));
        }
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let etag = header(reqwest::header::ETAG);
        let modified = header(reqwest::header::LAST_MODIFIED);
        let cannot_store = |e: std::io::Error| {
            format!("cannot store the download in {}: {e}", paths.body.display())
        };
        // Written to disk as it arrives, so a big list is never held whole
        // in memory; the part file is removed if anything below fails.
        let mut part = Part::create(paths).await.map_err(cannot_store)?;
        let mut written = 0u64;
        let mut text_seen = false;
        let mut first_rule = FirstRule::default();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("download failed: {e}"))?
        {
            written += chunk.len() as u64;
            if written > max_bytes {
                return Err(format!("larger than download_max_bytes ({max_bytes})"));
            }
            // A captive portal or a CDN's error page comes as 200 too;
            // taken for the list it would block nothing and be kept as the
            // copy. Told by its first text, not by its Content-Type, which
            // some servers get wrong for plain lists.
            if !text_seen {
                let first = written == chunk.len() as u64;
                let text = match chunk.strip_prefix(&UTF8_BOM) {
                    Some(rest) if first => rest,
                    _ => &chunk[..],
                };
                match text.iter().find(|b| !b.is_ascii_whitespace()) {
                    // No list format has a line that starts with `<`.
                    Some(b'<') => {
                        return Err("the download is a web page, not a list (a captive portal, \
                             or the server's error page? check the URL in a browser)"
                            .to_string());
                    }
                    Some(_) => text_seen = true,
                    None => {}
                }
            }
            first_rule.feed(&chunk);
            part.file.write_all(&chunk).await.map_err(cannot_store)?;
        }
        if !text_seen {
            return Err(
                "the download is empty (to empty a list on purpose, remove it from the config)"
                    .to_string(),
            );
        }
        // Nor is a 200 whose text holds no rule at all: a JSON or
        // plain-text error ("rate limit exceeded"), a compressed file, a
        // page with no markup. It would empty the list, and every 304
        // after it would keep it so.
        if !first_rule.finish() {
            return Err(
                "no line of the download is a rule (an error message, or a file in another \
                 format? check the URL)"
                    .to_string(),
            );
        }
        part.commit(paths, etag.as_deref(), modified.as_deref())
            .await
            .map_err(cannot_store)?;
        Ok(DownloadOutcome::Updated)
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| format!("timed out after {}", humantime::format_duration(timeout)))?
}

/// Looks for the first rule in a download as its chunks arrive, holding
/// at most one line (of at most [`MAX_LINE`] bytes) at a time; once one
/// is found the rest is not looked at.
#[derive(Default)]
struct FirstRule {
    /// The start of a line that a chunk cut.
    line: Vec<u8>,
    /// The line being held is longer than [`MAX_LINE`]: the rest of it is
    /// passed over (such a line is skipped by the build too).
    too_long: bool,
    found: bool,
}

impl FirstRule {
    fn feed(&mut self, mut chunk: &[u8]) {
        while !self.found && !chunk.is_empty() {
            let end = chunk.iter().position(|&b| b == b'\n');
            let piece = &chunk[..end.unwrap_or(chunk.len())];
            if !self.too_long {
                // As the build reads lines: one of MAX_LINE bytes or
                // more before its newline is skipped.
                if self.line.len() + piece.len() >= MAX_LINE {
                    self.too_long = true;
                    self.line = Vec::new();
                } else {
                    self.line.extend_from_slice(piece);
                }
            }
            let Some(end) = end else { return };
            self.end_line();
            chunk = &chunk[end + 1..];
        }
    }

    fn end_line(&mut self) {
        if !std::mem::take(&mut self.too_long) {
            let line = String::from_utf8_lossy(&self.line);
            let _ = super::parse_line(&line, |_| self.found = true);
        }
        self.line.clear();
    }

    /// Whether the text held a rule, its last line (without a newline)
    /// included.
    fn finish(mut self) -> bool {
        if !self.found {
            self.end_line();
        }
        self.found
    }
}

/// The bytes of a UTF-8 byte order mark, which may open a list.
const UTF8_BOM: [u8; 3] = [0xef, 0xbb, 0xbf];

/// A download being written beside the copy it will replace. Dropped
/// before [`Part::commit`] (an error, a timeout), it removes its file.
struct Part {
    path: PathBuf,
    file: tokio::fs::File,
    committed: bool,
}

impl Part {
    async fn create(paths: &CachePaths) -> std::io::Result<Self> {
        if let Some(dir) = paths.body.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        // A unique name: a scheduled download and one asked for by a
        // reload may run at the same time.
        let path = paths
            .body
            .with_extension(format!("list.{:08x}.part", rand::random::<u32>()));
        let file = tokio::fs::File::create(&path).await?;
        Ok(Self {
            path,
            file,
            committed: false,
        })
    }

    /// Puts the complete download in place of the copy, and its validators
    /// beside it.
    async fn commit(
        mut self,
        paths: &CachePaths,
        etag: Option<&str>,
        modified: Option<&str>,
    ) -> std::io::Result<()> {
        self.file.flush().await?;
        // On disk before it replaces the copy: a Pi that loses power right
        // after the rename must not come back with an empty list (kept by
        // every 304 after it, its ETag being current).
        self.file.sync_all().await?;
        // The old validators go first: were the new ones not written, the
        // new body must not be kept under the old body's ETag.
        match tokio::fs::remove_file(&paths.meta).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        tokio::fs::rename(&self.path, &paths.body).await?;
        self.committed = true;
        // The rename on disk too, before the validators that go with it.
        if let Some(dir) = paths.body.parent()
            && let Ok(dir) = File::open(dir)
        {
            let _ = dir.sync_all();
        }
        let mut meta = String::new();
        if let Some(e) = etag {
            meta.push_str(&format!("etag: {e}\n"));
        }
        if let Some(m) = modified {
            meta.push_str(&format!("last-modified: {m}\n"));
        }
        // Replaced by a rename, as the body is: writing into the old file
        // needs its write permission, which a copy left by another user
        // (an earlier run as root) denies even where the directory allows.
        let part = paths
            .meta
            .with_extension(format!("meta.{:08x}.part", rand::random::<u32>()));
        let written = match tokio::fs::write(&part, meta).await {
            Ok(()) => tokio::fs::rename(&part, &paths.meta).await,
            Err(e) => Err(e),
        };
        if let Err(error) = written {
            let _ = tokio::fs::remove_file(&part).await;
            // The new body is in place and the old validators are gone:
            // the list is current, and the next check downloads in full.
            tracing::warn!(%error, file = %paths.meta.display(), "cannot record the download's validators; the next check downloads the list in full");
        }
        Ok(())
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An HTTP server for download tests.
#[cfg(test)]
pub(crate) mod test_http {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One response of [`http_stub`]: after `delay`, a 200 with `body`
    /// and, if given, an ETag.
    pub(crate) struct Reply {
        pub delay: Duration,
        pub etag: Option<&'static str>,
        pub body: &'static str,
    }

    /// An HTTP server on 127.0.0.1 that answers every request (kept in
    /// the returned list, head only) with `reply(n)`, `n` counting from
    /// 0; the third value is the most requests it had open at once.
    pub(crate) async fn http_stub(
        reply: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> (
        std::net::SocketAddr,
        Arc<Mutex<Vec<String>>>,
        Arc<AtomicUsize>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (seen, m, reply) = (requests.clone(), most.clone(), Arc::new(reply));
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let (seen, o, m, reply) = (seen.clone(), open.clone(), m.clone(), reply.clone());
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = stream.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        req.extend_from_slice(&buf[..n]);
                    }
                    m.fetch_max(o.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(String::from_utf8_lossy(&req).into_owned());
                        seen.len() - 1
                    };
                    let Reply { delay, etag, body } = reply(n);
                    tokio::time::sleep(delay).await;
                    let etag = etag.map(|e| format!("ETag: {e}\r\n")).unwrap_or_default();
                    let response = format!(
                        "HTTP/1.1 200 OK\r\n{etag}Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    o.fetch_sub(1, Ordering::SeqCst);
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        (addr, requests, most)
    }
}

#[cfg(test)]
mod tests {
    use super::test_http::{Reply, http_stub};
    use super::*;
    use std::sync::atomic::Ordering;

    /// Whether [`FirstRule`] finds a rule in `text` cut into chunks of 1
    /// to 16 bytes, and whole.
    fn rule_in(text: &[u8]) -> bool {
        let found: Vec<bool> = (1..=16)
            .chain([text.len().max(1)])
            .map(|size| {
                let mut first = FirstRule::default();
                text.chunks(size).for_each(|c| first.feed(c));
                first.finish()
            })
            .collect();
        assert!(found.iter().all(|&f| f == found[0]), "{found:?}");
        found[0]
    }

    #[test]
    fn a_download_is_told_from_text_without_rules() {
        for list in [
            &b"# a list\n\nads.test\n"[..],
            b"0.0.0.0 ads.test",
            b"\xef\xbb\xbf||ads.test^\r\n",
            b"@@||ok.test^\n",
            b"! title\r\n\r\n*.ads.test\r\n",
        ] {
            assert!(rule_in(list), "{}", String::from_utf8_lossy(list));
        }
        for junk in [
            &b"{\"error\": \"rate limit exceeded\"}\n"[..],
            b"Rate limit exceeded. Try again later.\n",
            b"Forbidden",
            b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xff\xfe",
            b"# only comments\n! and more\n",
        ] {
            assert!(!rule_in(junk), "{}", String::from_utf8_lossy(junk));
        }
        // A line over MAX_LINE is passed over, not held: the rule after
        // it is found, and one inside it is not.
        let mut long = vec![b'x'; MAX_LINE];
        long.extend_from_slice(b" ads.test\nads.test\n");
        assert!(rule_in(&long));
        long.truncate(MAX_LINE + 10);
        assert!(!rule_in(&long));
        // At the limit, it agrees with the build: a regex rule of MAX_LINE
        // - 1 bytes is a rule, one of MAX_LINE (the `\r` counted) is not.
        for (size, tail) in [
            (MAX_LINE - 1, &b"\n"[..]),
            (MAX_LINE - 1, b""),
            (MAX_LINE, b"\n"),
            (MAX_LINE - 1, b"\r\n"),
            (MAX_LINE, b""),
        ] {
            let mut text = vec![b'/'];
            text.resize(size - 1, b'a');
            text.push(b'/');
            text.extend_from_slice(tail);
            let mut built = false;
            crate::lists::parse_lines(&mut &text[..], |_, _| built = true).unwrap();
            assert_eq!(rule_in(&text), built, "{size} + {tail:?}");
        }
    }

    /// A renamed list gets a copy of the newest of its old copies, with
    /// its validators and age; copies no list uses are marked, and go a
    /// week later if not refreshed meanwhile; files named otherwise stay.
    #[test]
    fn the_cache_directory_is_tidied() {
        let dir = tempfile::tempdir().unwrap();
        let (u1, u2) = ("http://127.0.0.1:1/a.txt", "http://127.0.0.1:1/b.txt");
        let config = Config::from_toml(
            &format!(
                "[blocking]\ncache_dir = \"c\"\n\
                 [[blocking.lists]]\nname = \"a\"\nurl = \"{u1}\"\n\
                 [[blocking.allow]]\nname = \"b\"\nurl = \"{u2}\"\n"
            ),
            "t",
            dir.path(),
        )
        .unwrap();
        let cache = dir.path().join("c");
        std::fs::create_dir(&cache).unwrap();
        let days = |n: u64| SystemTime::now() - Duration::from_secs(n * 24 * 3600);
        let age = |p: &Path, at: SystemTime| {
            File::options()
                .append(true)
                .open(p)
                .unwrap()
                .set_modified(at)
                .unwrap();
        };
        let put = |p: &Path, text: &str, days_old: u64| {
            std::fs::write(p, text).unwrap();
            age(p, days(days_old));
        };
        // "a" was called "first", then "old" until today; "b" had another
        // URL until 8 days ago, and "gone" was taken out of the config
        // then; "shared" is another instance's, refreshed yesterday.
        put(&CachePaths::new(&cache, "first", u1).body, "stale\n", 10);
        let renamed = CachePaths::new(&cache, "old", u1);
        put(&renamed.body, "a.example\n", 2);
        put(&renamed.meta, "etag: \"1\"\n", 2);
        let b = CachePaths::new(&cache, "b", u2);
        put(&b.body, "b.example\n", 0);
        put(&b.body.with_extension("unused"), "", 30);
        let b_before = CachePaths::new(&cache, "b", "http://127.0.0.1:1/old.txt");
        put(&b_before.body, "x\n", 8);
        put(&b_before.meta, "x\n", 8);
        let gone = CachePaths::new(&cache, "gone", "http://127.0.0.1:1/g.txt");
        put(&gone.body, "x\n", 8);
        let shared = CachePaths::new(&cache, "shared", "http://127.0.0.1:1/s.txt");
        put(&shared.body, "x\n", 1);
        let orphan = CachePaths::new(&cache, "orphan", "http://127.0.0.1:1/o.txt");
        put(&orphan.meta, "x\n", 0);
        let others = [
            "notes.txt",
            "mine.list",
            "a-0123.list",
            "x-0123456789ABCDEF.list",
        ];
        for other in others {
            put(&cache.join(other), "x\n", 30);
        }
        std::fs::create_dir(cache.join("d-0123456789abcdef.list")).unwrap();
        let listing = || {
            let mut left: Vec<String> = std::fs::read_dir(&cache)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            left.sort();
            left
        };
        let names = |paths: &[PathBuf]| {
            let mut names: Vec<String> = paths
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .chain(others.iter().map(|o| o.to_string()))
                .chain(["d-0123456789abcdef.list".to_string()])
                .collect();
            names.sort();
            names
        };

        tidy_cache(&config);
        let a = CachePaths::new(&cache, "a", u1);
        assert_eq!(std::fs::read_to_string(&a.body).unwrap(), "a.example\n");
        assert_eq!(std::fs::read_to_string(&a.meta).unwrap(), "etag: \"1\"\n");
        let modified = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        assert_eq!(
            modified(&a.body),
            modified(&renamed.body),
            "the copy's age is kept"
        );
        assert_eq!(std::fs::read_to_string(&b.body).unwrap(), "b.example\n");
        // Nothing removed yet; the unused copies marked, b's mark gone.
        let first = CachePaths::new(&cache, "first", u1).body;
        let unused = [
            &first,
            &renamed.body,
            &b_before.body,
            &gone.body,
            &shared.body,
        ];
        let mut want: Vec<PathBuf> = vec![
            a.body.clone(),
            a.meta.clone(),
            b.body.clone(),
            renamed.meta.clone(),
            b_before.meta.clone(),
        ];
        want.extend(unused.iter().map(|p| p.to_path_buf()));
        want.extend(unused.iter().map(|p| p.with_extension("unused")));
        assert_eq!(listing(), names(&want));

        // A week later: those not refreshed since go with their files.
        for body in unused {
            age(&body.with_extension("unused"), days(8));
        }
        tidy_cache(&config);
        let want = [
            a.body.clone(),
            a.meta.clone(),
            b.body.clone(),
            renamed.body.clone(),
            renamed.meta.clone(),
            renamed.body.with_extension("unused"),
            shared.body.clone(),
            shared.body.with_extension("unused"),
        ];
        assert_eq!(listing(), names(&want));
    }

    /// A copy for a renamed list never replaces a file that a download
    /// put there meanwhile.
    #[test]
    fn a_copy_does_not_replace_a_download() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("old"), dir.path().join("new"));
        std::fs::write(&from, "old\n").unwrap();
        std::fs::write(&to, "downloaded\n").unwrap();
        let error = copy_new(&from, &to).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "downloaded\n");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no part left"
        );
        std::fs::remove_file(&to).unwrap();
        copy_new(&from, &to).unwrap();
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "old\n");
    }

    /// Two downloads of one copy at once take turns: the second asks
    /// only after the first has stored its copy and validators.
    #[tokio::test]
    async fn downloads_of_one_copy_take_turns() {
        let (addr, _, most) = http_stub(|_| Reply {
            // Long enough for the other download to start meanwhile.
            delay: Duration::from_millis(200),
            etag: Some("\"v1\""),
            body: "ads.example\n",
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://{addr}/list.txt");
        let paths = CachePaths::new(dir.path(), "t", &url);
        let client = crate::reload::http_client();
        let get = || download(&client, &url, &paths, Duration::from_secs(10), 1 << 20);
        let (a, b) = tokio::join!(get(), get());
        assert_eq!(a, Ok(DownloadOutcome::Updated));
        assert_eq!(b, Ok(DownloadOutcome::Updated));
        assert_eq!(most.load(Ordering::SeqCst), 1, "requests at once");
        assert_eq!(
            std::fs::read_to_string(&paths.body).unwrap(),
            "ads.example\n"
        );
        assert_eq!(
            std::fs::read_to_string(&paths.meta).unwrap(),
            "etag: \"v1\"\n"
        );
    }

    /// A new copy that comes without an ETag takes the old copy's ETag
    /// with it: sent again, it could get a 304 that keeps a copy the
    /// server never vouched for.
    #[tokio::test]
    async fn a_new_copy_without_validators_drops_the_old_ones() {
        let (addr, requests, _) = http_stub(|n| Reply {
            delay: Duration::ZERO,
            etag: (n == 0).then_some("\"v1\""),
            body: if n == 0 {
                "old.example\n"
            } else {
                "new.example\n"
            },
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://{addr}/list.txt");
        let paths = CachePaths::new(dir.path(), "t", &url);
        let client = crate::reload::http_client();
        for _ in 0..3 {
            let got = download(&client, &url, &paths, Duration::from_secs(10), 1 << 20).await;
            assert_eq!(got, Ok(DownloadOutcome::Updated));
        }
        let requests = requests.lock().unwrap();
        let asked_v1 = |r: &String| r.to_ascii_lowercase().contains("if-none-match: \"v1\"");
        assert!(!asked_v1(&requests[0]), "{}", requests[0]);
        assert!(asked_v1(&requests[1]), "{}", requests[1]);
        assert!(!asked_v1(&requests[2]), "{}", requests[2]);
        assert_eq!(
            std::fs::read_to_string(&paths.body).unwrap(),
            "new.example\n"
        );
        assert_eq!(std::fs::read_to_string(&paths.meta).unwrap(), "");
    }

    /// When the old validators cannot be removed, the download fails and
    /// loses nothing: the old copy stays, and no part file is left behind.
    #[tokio::test]
    async fn validators_that_cannot_be_removed_keep_the_old_copy() {
        let (addr, _, _) = http_stub(|_| Reply {
            delay: Duration::ZERO,
            etag: Some("\"v2\""),
            body: "new.example\n",
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://{addr}/list.txt");
        let paths = CachePaths::new(dir.path(), "t", &url);
        std::fs::write(&paths.body, "old.example\n").unwrap();
        // A directory where the validators belong: removing it as a file
        // fails, whoever runs the test (root included).
        std::fs::create_dir(&paths.meta).unwrap();
        let client = crate::reload::http_client();
        let got = download(&client, &url, &paths, Duration::from_secs(10), 1 << 20).await;
        let error = got.unwrap_err();
        assert!(error.starts_with("cannot store the download"), "{error}");
        assert_eq!(
            std::fs::read_to_string(&paths.body).unwrap(),
            "old.example\n"
        );
        let mut files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let stem = paths.body.file_stem().unwrap().to_str().unwrap();
        assert_eq!(files, [format!("{stem}.list"), format!("{stem}.meta")]);
    }

    /// Only regular files are read as lists: a named pipe would block the
    /// list writer in `open`, a device would be read forever.
    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("list.fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        for path in [fifo.as_path(), Path::new("/dev/zero")] {
            let error = open(path).unwrap_err();
            assert_eq!(
                error.to_string(),
                "not a regular file",
                "{}",
                path.display()
            );
        }
        assert_eq!(open(dir.path()).unwrap_err().to_string(), "is a directory");
        let file = dir.path().join("list.txt");
        std::fs::write(&file, "ads.example\n").unwrap();
        assert!(open(&file).is_ok());
    }
}
