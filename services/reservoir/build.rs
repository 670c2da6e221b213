//! Stamps the git commit into `reservoir --version`: `RESERVOIR_GIT_COMMIT`
//! when set (image builds, where there is no .git), otherwise `git`, and
//! "unknown" when neither tells.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=RESERVOIR_GIT_COMMIT");
    // Rebuilt when HEAD moves (or a branch it points to does).
    for path in ["../../.git/HEAD", "../../.git/refs/heads", "../../.git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("RESERVOIR_GIT_COMMIT")
        .ok()
        .filter(|commit| !commit.trim().is_empty())
        .or_else(|| {
            let output = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
            output.status.success().then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        })
        .filter(|commit| !commit.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=RESERVOIR_GIT_COMMIT={commit}");
}
