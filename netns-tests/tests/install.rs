//! scripts/install, staged into a temporary directory (`--destdir`) from the binaries
//! the tests already use: what lands where, with which modes, and that an existing
//! configuration is kept.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `target/` and the profile holding this test's binaries (`target/<profile>/deps/..`).
fn target_and_profile() -> (PathBuf, String) {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    (
        profile_dir.parent().unwrap().to_path_buf(),
        profile_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned(),
    )
}

fn install(args: &[&str]) -> Output {
    let (target, _) = target_and_profile();
    Command::new(workspace().join("scripts/install"))
        .args(args)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn install_puts_binaries_units_and_configs_where_they_belong() {
    let (_, profile) = target_and_profile();
    for b in ["weftd", "weftctl", "weft-cni"] {
        let p = target_and_profile().0.join(&profile).join(b);
        if !p.is_file() {
            panic!(
                "{} not built: run `cargo build --workspace --bins` first",
                p.display()
            );
        }
    }
    let d = tempfile::tempdir().unwrap();
    let dest = d.path().display().to_string();
    let out = install(&["--destdir", &dest, "--profile", &profile, "--no-build"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let root = d.path();
    for (p, m) in [
        ("usr/local/bin/weftd", 0o755),
        ("usr/local/bin/weftctl", 0o755),
        ("opt/cni/bin/weft-cni", 0o755),
        ("etc/systemd/system/weftd.service", 0o644),
        ("etc/weft/weftd.toml", 0o644),
    ] {
        assert_eq!(mode(&root.join(p)), m, "{p}");
    }
    assert!(root.join("etc/cni/net.d").is_dir());
    assert_eq!(mode(&root.join("usr/local/bin/weft-agent")), 0o755);
    assert_eq!(
        mode(&root.join("etc/systemd/system/weft-agent.service")),
        0o644
    );
    assert_eq!(mode(&root.join("etc/weft/agent.toml")), 0o644);
    // The agent's unit runs the installed binary on the installed configuration.
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/weft-agent.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/weft-agent --config /etc/weft/agent.toml"),
        "{unit}"
    );
    // The installed plugin answers as a runtime asks it.
    let v = Command::new(root.join("opt/cni/bin/weft-cni"))
        .env_clear()
        .env("CNI_COMMAND", "VERSION")
        .output()
        .unwrap();
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).contains("\"1.1.0\""));

    // A second run keeps an edited configuration and says so.
    std::fs::write(root.join("etc/weft/weftd.toml"), "workers = 1\n").unwrap();
    let out = install(&["--destdir", &dest, "--profile", &profile, "--no-build"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept"));
    assert_eq!(
        std::fs::read_to_string(root.join("etc/weft/weftd.toml")).unwrap(),
        "workers = 1\n"
    );

    // Another prefix is written into the units.
    let out = install(&[
        "--destdir",
        &dest,
        "--prefix",
        "/usr",
        "--profile",
        &profile,
        "--no-build",
    ]);
    assert!(out.status.success());
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/weftd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/weftd"), "{unit}");
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/weft-agent.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/weft-agent"), "{unit}");
    assert!(root.join("usr/bin/weftd").is_file());
    assert!(root.join("usr/bin/weft-agent").is_file());
}

#[test]
fn install_refuses_bad_arguments_in_one_line() {
    for args in [&["--bogus"][..], &["--profile", "fast"][..]] {
        let out = install(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(args[args.len() - 1]), "{err}");
    }
}
