//! Build script: the commit ringway is built from, for `--version` and
//! `ringway_build_info`. Taken from `RINGWAY_COMMIT` when set (a container
//! build, which does not copy `.git`), else from `git` when the source is a
//! git checkout and git is installed, else `unknown`: the build never needs
//! more than cargo.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RINGWAY_COMMIT");
    let commit = match std::env::var("RINGWAY_COMMIT") {
        Ok(c) if !c.trim().is_empty() => clean(&c),
        _ => from_git().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=RINGWAY_COMMIT={commit}");
}

/// The short hash of HEAD, and a rerun whenever HEAD moves.
fn from_git() -> Option<String> {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let hash = git(&["rev-parse", "--short=12", "HEAD"])?;
    // HEAD itself, the branch it names, and packed refs: a commit or a
    // checkout changes one of them.
    for name in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", name]) {
            rerun_if_exists(&p);
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["rev-parse", "--git-path", &branch]) {
            rerun_if_exists(&p);
        }
    }
    Some(clean(&hash))
}

fn rerun_if_exists(path: &str) {
    if Path::new(path).exists() {
        println!("cargo:rerun-if-changed={path}");
    }
}

/// A label value and a version string: hex digits and letters only, at most
/// 40 characters.
fn clean(s: &str) -> String {
    let c: String = s
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(40)
        .collect();
    if c.is_empty() {
        "unknown".to_string()
    } else {
        c
    }
}
