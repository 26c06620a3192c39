//! Compiles every list under `blocklists/` into the binary, so `builtin:NAME`
//! works from any directory and the shipped lists cannot go missing.
//!
//! The generated table maps the file stem (`blocklists/xiaomi.txt` →
//! `xiaomi`, `blocklists/allow/essential.txt` → `essential`) to the file's
//! path and contents. Two files with the same stem fail the build.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::{env, fs};

fn collect(dir: &Path, out: &mut BTreeMap<String, PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "txt") {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            if let Some(other) = out.insert(stem.clone(), path.clone()) {
                panic!(
                    "two builtin lists are named {stem}: {} and {}",
                    other.display(),
                    path.display()
                );
            }
        }
    }
}

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let lists = root.join("blocklists");
    println!("cargo:rerun-if-changed={}", lists.display());
    let mut found = BTreeMap::new();
    collect(&lists, &mut found);
    let mut code = String::from("&[\n");
    for (name, path) in &found {
        // Watch each file too: a directory's mtime does not change when a file is edited in place.
        println!("cargo:rerun-if-changed={}", path.display());
        let rel = path
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        writeln!(
            code,
            "    ({name:?}, {rel:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    code.push(']');
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("builtin_lists.rs");
    fs::write(out, code).unwrap();
}
