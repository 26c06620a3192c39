//! Dropping root after the sockets are bound.

use nix::unistd::{Gid, Group, Uid, User, setgid, setgroups, setuid};

use crate::config::{Config, ServerConfig};

/// Switches to `[server] user`/`group` when running as root. Call it after
/// binding, before serving. Without `user`, running as root is allowed but
/// warned about.
///
/// The directory for downloaded lists is prepared first (see
/// `prepare_cache_dir`): the user may not be able to make it (the
/// default is then `/var/cache/telesink`), and every download would fail.
/// With `url` lists configured, a directory the user still cannot write
/// is reported, with what to do.
pub fn drop_privileges(full: &Config) -> Result<(), String> {
    let config = &full.server;
    if !Uid::effective().is_root() {
        if config.user.is_some() {
            tracing::debug!("not running as root; [server] user is not needed");
        }
        return Ok(());
    }
    let Some((user, gid)) = target(config)? else {
        tracing::warn!(
            "running as root: set [server] user to drop privileges once the sockets are bound, or run unprivileged with CAP_NET_BIND_SERVICE"
        );
        return Ok(());
    };
    let name = &user.name;
    crate::config::note_switched_user();
    let cache = full.blocking.cache_dir(&full.base_dir);
    let downloads = full
        .blocking
        .lists
        .iter()
        .chain(&full.blocking.allow)
        .any(|l| l.url.is_some());
    let default_dir = cache == std::path::Path::new(crate::config::SYSTEM_CACHE_DIR);
    if let Err(error) = prepare_cache_dir(&cache, default_dir, user.uid, gid)
        && downloads
    {
        tracing::warn!(%error, dir = %cache.display(), "cannot make the directory for downloaded lists for user {name:?}: make it yourself, or set [blocking] cache_dir");
    }
    switch(user.uid, gid).map_err(|e| format!("cannot switch to user {name:?}: {e}"))?;
    tracing::info!(user = %name, uid = user.uid.as_raw(), gid = gid.as_raw(), "dropped root privileges");
    if downloads && let Err(error) = writable(&cache) {
        tracing::warn!(
            %error,
            dir = %cache.display(),
            "user {name:?} cannot write the directory for downloaded lists, so every download will fail: give it to that user, or set [blocking] cache_dir"
        );
    }
    Ok(())
}

/// Makes `dir` for downloaded lists, owned by the user telesink switches
/// to, if it does not exist; gives the default one (`default_dir`) to
/// that user if root owns it (made by an earlier run without `user`),
/// with the files in it. A directory set with `cache_dir` that exists is
/// left as it is. Owners
/// are changed with `lchown`: if something replaced the new directory
/// with a symbolic link meanwhile, the link changes owner, not what it
/// points at.
fn prepare_cache_dir(
    dir: &std::path::Path,
    default_dir: bool,
    uid: Uid,
    gid: Gid,
) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let give = || std::os::unix::fs::lchown(dir, Some(uid.as_raw()), Some(gid.as_raw()));
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)?;
            give()
        }
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() && meta.uid() == 0 && default_dir => {
            give()?;
            // Regular files only (`metadata` does not follow a link), and
            // none with other names elsewhere: a hard link put here would
            // hand over the file it links to.
            for entry in std::fs::read_dir(dir)?.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_file() && meta.nlink() == 1 {
                    std::os::unix::fs::lchown(
                        entry.path(),
                        Some(uid.as_raw()),
                        Some(gid.as_raw()),
                    )?;
                }
            }
            Ok(())
        }
        Ok(_) => Ok(()),
    }
}

/// Whether this process can make a file in `dir`.
fn writable(dir: &std::path::Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".telesink-write-test-{}", std::process::id()));
    std::fs::File::create(&probe)?;
    std::fs::remove_file(&probe)
}

/// The user and group `[server] user` and `group` name on this machine,
/// if a user is set.
pub fn target(config: &ServerConfig) -> Result<Option<(User, Gid)>, String> {
    let Some(name) = &config.user else {
        return Ok(None);
    };
    let user = User::from_name(name)
        .map_err(|e| format!("[server] user {name:?}: {e}"))?
        .ok_or_else(|| format!("[server] user {name:?} does not exist"))?;
    let gid = match &config.group {
        Some(g) => {
            Group::from_name(g)
                .map_err(|e| format!("[server] group {g:?}: {e}"))?
                .ok_or_else(|| format!("[server] group {g:?} does not exist"))?
                .gid
        }
        None => user.gid,
    };
    Ok(Some((user, gid)))
}

fn switch(uid: Uid, gid: Gid) -> nix::Result<()> {
    // Supplementary groups first, then the group, then the user: once the
    // user is switched, the others can no longer be changed.
    setgroups(&[gid])?;
    setgid(gid)?;
    setuid(uid)?;
    // setuid from root to another user drops every capability, so regaining
    // root must now fail; make sure it does.
    if setuid(Uid::from_raw(0)).is_ok() {
        return Err(nix::Error::EPERM);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// The default directory left by a run as root is handed over with
    /// its plain files, but not a hard link's file (another name of it may
    /// be anywhere, `/etc/shadow` say) nor what a symbolic link points at;
    /// a directory set in the config is not touched.
    #[test]
    fn root_owned_copies_are_handed_over_but_not_linked_files() {
        if !Uid::effective().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs the tests as root"
            );
            println!("SKIPPED: needs root");
            return;
        }
        let nobody = User::from_name("nobody").unwrap().expect("a user nobody");
        let root = tempfile::tempdir().unwrap();
        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let linked = outside.join("linked");
        let pointed = outside.join("pointed");
        std::fs::write(&linked, "x").unwrap();
        std::fs::write(&pointed, "x").unwrap();
        let owner = |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap().uid();

        for default_dir in [false, true] {
            let dir = root.path().join(format!("cache-{default_dir}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("copy.list"), "ads.example\n").unwrap();
            std::fs::hard_link(&linked, dir.join("hard.list")).unwrap();
            std::os::unix::fs::symlink(&pointed, dir.join("soft.list")).unwrap();
            prepare_cache_dir(&dir, default_dir, nobody.uid, nobody.gid).unwrap();
            let handed = if default_dir { nobody.uid.as_raw() } else { 0 };
            assert_eq!(owner(&dir), handed, "the directory, default {default_dir}");
            assert_eq!(
                owner(&dir.join("copy.list")),
                handed,
                "a copy, default {default_dir}"
            );
            assert_eq!(owner(&linked), 0, "a hard link's file");
            assert_eq!(owner(&pointed), 0, "a symbolic link's target");
        }

        // One that does not exist yet is made for the user, default or not.
        let new = root.path().join("new/cache");
        prepare_cache_dir(&new, false, nobody.uid, nobody.gid).unwrap();
        assert_eq!(owner(&new), nobody.uid.as_raw());
    }
}
