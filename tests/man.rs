//! `ringway man` and `ringway completions SHELL`: the man pages are made
//! from the real command line (each page has exactly the long flags its
//! `--help` shows, so a new flag is on it without anyone writing it down),
//! the bash script is valid bash that completes ringway's flags,
//! subcommands and shells, the other shells get their scripts, and an
//! unknown shell is a usage error (exit 2) naming the ones there are. The
//! proxy's own flags parse as before.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

/// `ringway ARGS` to its exit: exit code, stdout, stderr.
fn ringway(args: &[&str]) -> (Option<i32>, String, String) {
    run_with_output(args, PATIENCE)
}

/// `ringway ARGS`, which must exit 0; its stdout.
fn ok(args: &[&str]) -> String {
    let (code, out, err) = ringway(args);
    assert_eq!(code, Some(0), "{args:?}: {err}");
    out
}

/// The long flags a man page declares: the `\fB\-\-name\fR` on the line
/// after each `.TP` (its OPTIONS entries).
fn page_flags(page: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = page.lines().collect();
    let mut flags = BTreeSet::new();
    for pair in lines.windows(2) {
        if pair[0] != ".TP" {
            continue;
        }
        let entry = pair[1].replace("\\-", "-");
        for part in entry.split("\\fB--").skip(1) {
            flags.insert(part.split("\\fR").next().unwrap().to_string());
        }
    }
    flags
}

#[test]
fn the_man_page_has_every_flag_of_help() {
    let page = ok(&["man"]);
    assert!(page.contains("\n.TH ringway 1 "), "{page}");
    assert!(
        page.contains("\n.SH NAME\nringway \\- A thread\\-per\\-core io_uring WebSocket"),
        "{page}"
    );
    for section in ["SYNOPSIS", "DESCRIPTION", "OPTIONS", "SUBCOMMANDS"] {
        assert!(page.contains(&format!("\n.SH {section}\n")), "{section}");
    }
    let help = ok(&["--help"]);
    let flags = help_flags(&help);
    // The parse above finds the flags: a few that must be there, and many.
    for f in ["upstream", "listen", "idle-timeout", "config", "help"] {
        assert!(flags.contains(f), "{f} not found in --help: {flags:?}");
    }
    assert!(flags.len() > 40, "{flags:?}");
    assert_eq!(page_flags(&page), flags, "ringway.1 against ringway --help");
    for sub in ["demo", "check", "man", "completions"] {
        assert!(page.contains(&format!("ringway\\-{sub}(1)")), "{sub}");
    }
}

#[test]
fn out_dir_writes_a_page_per_subcommand_with_its_flags() {
    let dir = TempDir::new();
    let out_dir = dir.path("man1");
    let listed = ok(&["man", "--out-dir", &out_dir]);
    let mut written: Vec<&str> = listed.lines().collect();
    written.sort();
    let expected: Vec<String> = [
        "ringway-check.1",
        "ringway-completions.1",
        "ringway-demo.1",
        "ringway-man.1",
        "ringway.1",
    ]
    .iter()
    .map(|n| format!("{out_dir}/{n}"))
    .collect();
    assert_eq!(written, expected, "{listed}");
    assert_eq!(
        std::fs::read_to_string(format!("{out_dir}/ringway.1")).unwrap(),
        ok(&["man"]),
        "the printed page and ringway.1 are the same"
    );
    for sub in ["demo", "check", "man", "completions"] {
        let page = std::fs::read_to_string(format!("{out_dir}/ringway-{sub}.1")).unwrap();
        assert!(page.contains(&format!("\n.TH ringway-{sub} 1 ")), "{page}");
        let help = help_flags(&ok(&[sub, "--help"]));
        assert!(
            help.contains("help") && help.contains("log-level"),
            "{help:?}"
        );
        assert_eq!(page_flags(&page), help, "ringway-{sub}.1");
    }
    // `check` takes the proxy's flags, so its page has them too.
    let check = std::fs::read_to_string(format!("{out_dir}/ringway-check.1")).unwrap();
    assert!(page_flags(&check).contains("upstream"), "{check}");
}

/// Run `bash -c SCRIPT` with `stdin`; exit code and stdout.
fn bash(script: &str, stdin: &str) -> (Option<i32>, String) {
    let mut child = Command::new("bash")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("bash");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8(out.stdout).unwrap())
}

#[test]
fn bash_completion_is_valid_and_completes_flags_and_subcommands() {
    let script = ok(&["completions", "bash"]);
    assert!(script.contains("--upstream") && script.contains("check"));
    let (code, _) = bash("bash -n", &script);
    assert_eq!(code, Some(0), "bash -n refused the script");
    // What bash offers at `ringway --upst<TAB>`, `ringway ch<TAB>` and
    // `ringway completions <TAB>`, calling the script's function as
    // `complete -F` would.
    let offers = |words: &[&str]| -> Vec<String> {
        let cword = words.len() - 1;
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let line = words.join(" ");
        let prev = words[cword - 1];
        let cur = words[cword];
        let call = format!(
            "source /dev/stdin\n\
             COMP_WORDS=({}); COMP_CWORD={cword}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}\n\
             _ringway ringway '{cur}' '{prev}'\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            quoted.join(" ")
        );
        let (code, out) = bash(&call, &script);
        assert_eq!(code, Some(0), "{words:?}");
        out.lines().map(str::to_string).collect()
    };
    let flags = offers(&["ringway", "--upst"]);
    assert!(flags.contains(&"--upstream".to_string()), "{flags:?}");
    assert!(flags.iter().all(|f| f.starts_with("--upst")), "{flags:?}");
    assert_eq!(offers(&["ringway", "ch"]), ["check"]);
    assert_eq!(
        offers(&["ringway", "completions", ""])
            .into_iter()
            .filter(|w| !w.starts_with('-'))
            .collect::<Vec<_>>(),
        ["bash", "elvish", "fish", "powershell", "zsh"]
    );
}

#[test]
fn every_other_shell_gets_a_script_and_an_unknown_one_exit_2() {
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let script = ok(&["completions", shell]);
        assert!(
            script.contains("upstream") && script.contains("check"),
            "{shell}: {script}"
        );
    }
    let (code, out, err) = ringway(&["completions", "tcsh"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("invalid value 'tcsh'")
            && err.contains("possible values: bash, elvish, fish, powershell, zsh"),
        "{err}"
    );
    let (code, _, err) = ringway(&["completions"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("<SHELL>"), "{err}");
}

#[test]
fn the_proxy_flags_parse_as_before() {
    // The proxy's flags are still the top level's and `check`'s ...
    let out = ok(&[
        "check",
        "--upstream",
        "127.0.0.1:9000",
        "--idle-timeout",
        "5m",
    ]);
    assert!(out.starts_with("configuration OK\n"), "{out}");
    // ... and not the documentation commands'.
    for args in [
        &["man", "--upstream", "127.0.0.1:9000"][..],
        &["completions", "bash", "--listen", "127.0.0.1:0"],
        &["--upstream", "127.0.0.1:9000", "man"],
    ] {
        let (code, out, err) = ringway(args);
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(out.is_empty(), "{args:?}: {out}");
    }
}
