//! What an operator sees of the binary itself.

/// `reservoir --version` names the release and the commit it was built from.
#[test]
fn version_names_the_release_and_the_commit() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_reservoir")).arg("--version").output().unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let expected_start = format!("reservoir {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(printed.starts_with(&expected_start), "printed {printed:?}");
    let commit = printed.trim().trim_start_matches(&expected_start).trim_end_matches(')');
    let from_git = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
    match from_git {
        // Built in this checkout: the commit is this checkout's.
        Some(head) => assert_eq!(commit, head, "printed {printed:?}"),
        None => assert!(!commit.is_empty(), "printed {printed:?}"),
    }
}
