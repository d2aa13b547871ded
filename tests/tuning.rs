//! `tuning/`: `apply.sh` refuses arguments it does not know (applying
//! nothing), never lowers what a host has higher unless told to, and the
//! systemd unit reloads, may write its log directory, and starts ringway
//! with flags ringway accepts.
//!
//! `apply.sh` runs against a fake `/proc/sys` (`--sysctl-root`), never the
//! host's. As a second guard, `PATH` starts with a fake `sysctl` that only
//! records its calls: a script that ignored `--sysctl-root` (as the old one
//! did) still could not change the host, and the test sees it tried.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const APPLY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/apply.sh");
const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/ringway.service");

/// Whether bash is here to run the script; says so when it is not.
fn have_bash() -> bool {
    match Command::new("bash").args(["-c", "true"]).status() {
        Ok(st) if st.success() => true,
        other => {
            println!("skipped: bash is not available to run tuning/apply.sh ({other:?})");
            false
        }
    }
}

/// A fake sysctl tree (`root/`) and a fake `sysctl` command (`bin/`) for
/// one test; removed on drop.
struct Host {
    dir: PathBuf,
}

impl Host {
    /// `values`: sysctl key -> the value in its file (fields may be tabs,
    /// as in /proc/sys).
    fn new(name: &str, values: &[(&str, &str)]) -> Host {
        let dir =
            std::env::temp_dir().join(format!("ringway-test-tuning-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::create_dir_all(dir.join("root")).unwrap();
        let host = Host { dir };
        for (key, value) in values {
            let file = host.file(key);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, format!("{value}\n")).unwrap();
        }
        let fake = host.dir.join("bin/sysctl");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\nexit 1\n",
                host.sysctl_log().display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        host
    }

    fn root(&self) -> String {
        self.dir.join("root").display().to_string()
    }

    fn file(&self, key: &str) -> PathBuf {
        self.dir.join("root").join(key.replace('.', "/"))
    }

    fn sysctl_log(&self) -> PathBuf {
        self.dir.join("sysctl-calls")
    }

    /// What the fake `sysctl` was asked to do (nothing, if all is well).
    fn sysctl_calls(&self) -> String {
        std::fs::read_to_string(self.sysctl_log()).unwrap_or_default()
    }

    /// Every key's value, whitespace squeezed to one space.
    fn values(&self) -> BTreeMap<String, String> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(root, &p, out);
                } else {
                    let key = p.strip_prefix(root).unwrap().display().to_string();
                    let text = std::fs::read_to_string(&p).unwrap();
                    let words: Vec<&str> = text.split_whitespace().collect();
                    out.insert(key.replace('/', "."), words.join(" "));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.dir.join("root"), &self.dir.join("root"), &mut out);
        out
    }

    fn value(&self, key: &str) -> String {
        self.values()
            .remove(key)
            .unwrap_or_else(|| panic!("no {key}"))
    }

    /// Run `bash apply.sh ARGS`; exit code, stdout, stderr.
    fn apply(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let path = format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("bash")
            .arg(APPLY)
            .args(args)
            .env("PATH", path)
            .output()
            .expect("run bash tuning/apply.sh");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A host with some values above the file's and some below.
fn mixed_host(name: &str) -> Host {
    Host::new(
        name,
        &[
            ("net.core.somaxconn", "100000"),
            ("net.ipv4.tcp_max_syn_backlog", "128"),
            ("net.ipv4.tcp_rmem", "4096\t131072\t33554432"),
            ("net.ipv4.tcp_wmem", "4096\t16384\t4194304"),
            ("net.ipv4.ip_local_port_range", "1024\t65535"),
            ("net.ipv4.tcp_keepalive_time", "300"),
            ("net.ipv4.tcp_tw_reuse", "2"),
            // 2^63-1, the default on 64-bit kernels.
            ("fs.file-max", "9223372036854775807"),
            ("fs.nr_open", "1048576"),
        ],
    )
}

#[test]
fn unknown_arguments_are_refused_with_the_usage_and_nothing_is_applied() {
    if !have_bash() {
        return;
    }
    let host = mixed_host("unknown");
    let before = host.values();
    let root = host.root();
    for args in [
        vec!["--dryrun"],
        vec!["dry-run"],
        vec!["-x"],
        vec!["--dry-run", "--bogus"],
        vec!["--sysctl-root", &root, "--dryrun"],
        vec!["--sysctl-root", &root, "--allow-lower", "extra"],
        vec!["--sysctl-root"],
    ] {
        let (code, out, err) = host.apply(&args);
        assert_eq!(code, Some(2), "{args:?}\nstdout:\n{out}\nstderr:\n{err}");
        assert!(err.contains("Usage: apply.sh"), "{args:?}: {err}");
        assert!(
            err.contains("apply.sh: "),
            "{args:?}: says what is wrong: {err}"
        );
        assert_eq!(out, "", "{args:?}: nothing on stdout, nothing applied");
        assert_eq!(host.values(), before, "{args:?} changed the fake host");
        assert_eq!(host.sysctl_calls(), "", "{args:?} called sysctl");
    }
}

#[test]
fn help_prints_the_usage() {
    if !have_bash() {
        return;
    }
    let host = Host::new("help", &[]);
    for flag in ["--help", "-h"] {
        let (code, out, err) = host.apply(&[flag]);
        assert_eq!(code, Some(0), "{flag}: {err}");
        assert!(out.starts_with("Usage: apply.sh"), "{flag}: {out}");
        for word in ["--dry-run", "--allow-lower", "--sysctl-root", "keep "] {
            assert!(out.contains(word), "{flag}: the usage names {word}: {out}");
        }
        assert_eq!(err, "", "{flag}");
    }
}

#[test]
fn higher_host_values_are_kept_and_lower_ones_raised() {
    if !have_bash() {
        return;
    }
    let host = mixed_host("mixed");
    let before = host.values();
    let root = host.root();

    // A dry run says what it keeps and what it would change, and changes
    // nothing.
    for dry in ["--dry-run", "-n"] {
        let (code, out, err) = host.apply(&["--sysctl-root", &root, dry]);
        assert_eq!(code, Some(0), "{out}\n{err}");
        for line in [
            "keep   net.core.somaxconn: host value 100000 is higher than 65535",
            "keep   net.ipv4.tcp_rmem: host value 131072 is higher than 16384 (field 2 of 3)",
            "keep   net.ipv4.tcp_rmem: host value 33554432 is higher than 8388608 (field 3 of 3)",
            "keep   net.ipv4.ip_local_port_range: host value 1024 is lower",
            "keep   net.ipv4.tcp_keepalive_time: host value 300 is lower",
            "keep   fs.file-max: host value 9223372036854775807 is higher than 4194304",
            "would  net.ipv4.tcp_max_syn_backlog: 128 -> 65535",
            "would  net.ipv4.tcp_wmem: 4096 16384 4194304 -> 4096 16384 8388608",
            "would  net.ipv4.tcp_tw_reuse: 2 -> 1",
            "would  fs.nr_open: 1048576 -> 4194304",
            "skip   net.core.netdev_max_backlog (not on this kernel)",
        ] {
            assert!(out.contains(line), "{dry}: no {line:?} in:\n{out}");
        }
        assert!(!out.contains("would  net.core.somaxconn"), "{out}");
        assert!(out.contains("nothing changed"), "{out}");
        assert_eq!(host.values(), before, "{dry} changed the fake host");
    }

    // A real run raises the lower values and leaves the higher ones.
    let (code, out, err) = host.apply(&["--sysctl-root", &root]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("set    net.ipv4.tcp_max_syn_backlog: 128 -> 65535"),
        "{out}"
    );
    let want = [
        ("net.core.somaxconn", "100000"),
        ("net.ipv4.tcp_max_syn_backlog", "65535"),
        ("net.ipv4.tcp_rmem", "4096 131072 33554432"),
        ("net.ipv4.tcp_wmem", "4096 16384 8388608"),
        ("net.ipv4.ip_local_port_range", "1024 65535"),
        ("net.ipv4.tcp_keepalive_time", "300"),
        ("net.ipv4.tcp_tw_reuse", "1"),
        ("fs.file-max", "9223372036854775807"),
        ("fs.nr_open", "4194304"),
    ];
    for (key, value) in want {
        assert_eq!(host.value(key), value, "{key} after the run:\n{out}");
    }
    assert_eq!(host.sysctl_calls(), "", "the fake root, not sysctl");

    // Again: nothing left to change.
    let (code, out, _) = host.apply(&["--sysctl-root", &root]);
    assert_eq!(code, Some(0));
    assert!(out.contains("0 changed, 0 failed, 6 kept"), "{out}");

    // --allow-lower says what it lowers, and lowers it.
    let (code, out, err) = host.apply(&["--sysctl-root", &root, "--allow-lower"]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(
        out.contains("lower  net.core.somaxconn: 100000 -> 65535"),
        "{out}"
    );
    assert_eq!(host.value("net.core.somaxconn"), "65535");
    assert_eq!(host.value("net.ipv4.tcp_rmem"), "4096 16384 8388608");
    assert_eq!(host.value("net.ipv4.ip_local_port_range"), "10240 65535");
    assert_eq!(host.value("net.ipv4.tcp_keepalive_time"), "600");
}

#[test]
fn reserved_ports_are_added_to_the_hosts_and_odd_shapes_left_alone() {
    if !have_bash() {
        return;
    }
    let host = Host::new(
        "reserved",
        &[
            ("net.ipv4.ip_local_reserved_ports", "8080,27017"),
            ("net.ipv4.tcp_rmem", "4096\t131072"),
        ],
    );
    let conf = host.dir.join("test.conf");
    std::fs::write(
        &conf,
        "# a comment\nnet.ipv4.ip_local_reserved_ports = 11211, 27017\n\
         net.ipv4.tcp_rmem = 4096 16384 8388608",
    )
    .unwrap();
    let (root, conf) = (host.root(), conf.display().to_string());
    let (code, out, err) = host.apply(&["--sysctl-root", &root, "--conf", &conf]);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(
        host.value("net.ipv4.ip_local_reserved_ports"),
        "8080,27017,11211",
        "{out}"
    );
    assert!(out.contains("skip   net.ipv4.tcp_rmem: "), "{out}");
    assert_eq!(host.value("net.ipv4.tcp_rmem"), "4096 131072");
}

/// The unit's `ExecStart=` command line, continuation lines joined.
fn exec_start(unit: &str) -> Vec<String> {
    let joined = unit.replace("\\\n", " ");
    let line = joined
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart= line");
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn the_unit_reloads_has_a_log_directory_and_its_flags_are_valid() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for want in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Type=notify",
        "NotifyAccess=main",
        "LogsDirectory=ringway",
        "ProtectSystem=strict",
    ] {
        assert!(lines.contains(&want), "the unit has {want:?}");
    }
    assert!(unit.contains("--access-log /var/log/ringway/"), "{unit}");

    let argv = exec_start(&unit);
    assert_eq!(argv[0], "/usr/local/bin/ringway");
    let check = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ringway"))
            .arg("check")
            .args(&argv[1..])
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "ringway check {argv:?} {extra:?}: {stderr}"
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(check(&[]).starts_with("configuration OK"));
    // The access log the comment suggests.
    let out = check(&["--access-log", "/var/log/ringway/access.log"]);
    assert!(
        out.contains("access log /var/log/ringway/access.log"),
        "{out}"
    );
}
