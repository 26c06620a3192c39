//! Every shipped configuration file parses, rejects unknown keys with their
//! line, and the `telesink` binary's `check-config` reports on it.

use std::path::{Path, PathBuf};
use std::process::Command;

use telesink::config::{Config, ConfigError};

fn config_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = ["config", "deploy/config", "deploy/docker/config"]
        .iter()
        .filter_map(|d| std::fs::read_dir(root.join(d)).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
}

#[test]
fn every_config_file_parses() {
    for path in config_files() {
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// For each table header in each file, insert an unknown key right after
/// it and expect an error that points at that line.
#[test]
fn every_table_rejects_unknown_keys_with_their_line() {
    for path in config_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let headers: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.trim_start().starts_with('['))
            .map(|(i, _)| i)
            .collect();
        assert!(!headers.is_empty(), "{} has tables", path.display());
        for &h in &headers {
            let mut edited: Vec<&str> = lines.clone();
            edited.insert(h + 1, "no_such_key = 1");
            let edited = edited.join("\n");
            let err =
                Config::from_toml(&edited, "edited.toml", path.parent().unwrap()).unwrap_err();
            match &err {
                ConfigError::Parse { line, message, .. } => {
                    assert_eq!(*line, h + 2, "{}: {err}", path.display());
                    assert!(message.contains("no_such_key"), "{err}");
                }
                other => panic!("{}: expected a parse error, got {other}", path.display()),
            }
        }
        // And at the top level.
        let edited = format!("no_such_key = 1\n{text}");
        let err = Config::from_toml(&edited, "edited.toml", path.parent().unwrap()).unwrap_err();
        assert!(err.to_string().starts_with("edited.toml:1:1:"), "{err}");
    }
}

#[test]
fn the_embedded_default_is_config_telesink_toml() {
    let file =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/telesink.toml"))
            .unwrap();
    assert_eq!(file, telesink::config::DEFAULT_CONFIG);
}

fn telesink(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_telesink"))
        .args(args)
        .env("TELESINK_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn check_config_summarises_the_default() {
    let out = telesink(&["check-config"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("listen: 127.0.0.1:5353, [::1]:5353"),
        "{stdout}"
    );
    assert!(
        stdout.contains("upstream: 9.9.9.9:53, 1.1.1.1:53"),
        "{stdout}"
    );
    for vendor in ["xiaomi", "oppo", "huawei", "vivo", "samsung", "essential"] {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(vendor))
            .unwrap_or_else(|| panic!("no line for {vendor}: {stdout}"));
        let count: usize = line.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!(count > 0, "{line}");
    }
}

#[test]
fn check_config_reports_errors_with_file_line_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[upstream]\nservers = [\"127.0.0.1\"]\ntimeout = \"soon\"\n",
    )
    .unwrap();
    let out = telesink(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:3:11:", path.display())),
        "{stderr}"
    );

    std::fs::write(
        &path,
        "[[blocking.lists]]\nname = \"mine\"\npath = \"missing.txt\"\n",
    )
    .unwrap();
    let out = telesink(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing.txt"), "{stderr}");

    // A user that does not exist here would show only at start, as root.
    std::fs::write(&path, "[server]\nuser = \"no-such-user-here\"\n").unwrap();
    let out = telesink(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[server] user \"no-such-user-here\" does not exist"),
        "{stderr}"
    );
    std::fs::write(&path, "[server]\nuser = \"nobody\"\n").unwrap();
    let out = telesink(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn version_flag() {
    let out = telesink(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("telesink {}", env!("CARGO_PKG_VERSION"))
    );
}
