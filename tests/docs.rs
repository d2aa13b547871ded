//! The README keeps up with the binary: every flag of `ringway --help` has
//! a row in its Flags table, and every metric family `/metrics` exports
//! has a row in its metrics table; every link to a heading finds it.

mod common;

use std::collections::BTreeSet;

use common::*;

const README: &str = include_str!("../README.md");

/// The lines of the README section that starts with `heading`.
fn section(heading: &str) -> Vec<&'static str> {
    README
        .lines()
        .skip_while(|l| *l != heading)
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .collect()
}

#[test]
fn every_flag_has_a_row_in_the_flags_table() {
    let (code, help, _) = run_with_output(&["--help"], PATIENCE);
    assert_eq!(code, Some(0));
    let flags: BTreeSet<String> = help_flags(&help)
        .into_iter()
        .filter(|f| f != "help" && f != "version")
        .map(|f| format!("--{f}"))
        .collect();
    assert!(
        flags.len() > 40 && flags.contains("--upstream"),
        "{flags:?}"
    );
    let rows: BTreeSet<String> = section("## Flags")
        .into_iter()
        .filter_map(|l| l.strip_prefix("| `--"))
        .map(|l| {
            let name: String = l
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            format!("--{name}")
        })
        .collect();
    let missing: Vec<_> = flags.difference(&rows).collect();
    assert!(
        missing.is_empty(),
        "flags without a README row: {missing:?}"
    );
}

#[test]
fn every_metric_has_a_row_in_the_metrics_table() {
    let backend = Backend::echo();
    let proxy = start_proxy(&backend, &["--metrics-listen", "127.0.0.1:0"]);
    let (status, text) = scrape(metrics_addr(&proxy), "/metrics");
    assert_eq!(status, 200);
    let families: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(families.len() > 20, "{families:?}");
    let table = section("## Operations").join("\n");
    let missing: Vec<_> = families
        .iter()
        .filter(|f| !table.contains(&format!("`{f}`")) && !table.contains(&format!("`{f}{{")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics without a README row: {missing:?}"
    );
}

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_`
/// dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_link_within_the_readme_has_its_heading() {
    let anchors: BTreeSet<String> = README
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect();
    assert!(anchors.contains("config-file-and-ringway-check"));
    let links: Vec<&str> = README
        .split("](#")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .collect();
    assert!(links.len() > 30, "{links:?}");
    let broken: Vec<_> = links.iter().filter(|l| !anchors.contains(**l)).collect();
    assert!(broken.is_empty(), "links to no heading: {broken:?}");
}
