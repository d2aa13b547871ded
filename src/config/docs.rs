//! `ringway man` and `ringway completions SHELL`: the man page (roff) and
//! the shell completion scripts, generated from clap's definition of the
//! command line in `cli.rs` (clap_mangen, clap_complete). Nothing here is
//! written by hand, so they name every flag and subcommand the parser has,
//! with its help text, and cannot drift from it.
//!
//! Each is made whole in memory, then written: a reader that goes away
//! (`ringway man | head`) ends the output quietly instead of failing halfway
//! through a generator that cannot report a write error.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::CommandFactory;

use crate::config::cli::Cli;

/// The name the pages and the scripts are for.
const BIN: &str = "ringway";

/// The command line as the documentation sees it: without clap's `help`
/// subcommand, which has no page of its own (`--help` is on every page).
fn command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The man page of `ringway` itself, `ringway.1`, as roff.
pub fn man_page() -> Vec<u8> {
    let mut out = Vec::new();
    clap_mangen::Man::new(command())
        .render(&mut out)
        .expect("writing to a Vec cannot fail");
    out
}

/// Write `ringway.1` and a page per subcommand (`ringway-check.1`, ...)
/// into `dir`, made if missing; returns the files written.
pub fn write_man_pages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    fn walk(cmd: &clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
        written.push(clap_mangen::Man::new(cmd.clone()).generate_to(dir)?);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, dir, written)?;
        }
        Ok(())
    }
    let in_dir = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(in_dir)?;
    let mut written = Vec::new();
    walk(&command(), dir, &mut written).map_err(in_dir)?;
    Ok(written)
}

/// The completion script for `shell`.
pub fn completion_script(shell: clap_complete::Shell) -> Vec<u8> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command(), BIN, &mut out);
    out
}

/// `ringway man [--out-dir DIR]`: the page on stdout, or the pages in DIR
/// and their paths on stdout.
pub fn man(out_dir: Option<&Path>) -> io::Result<()> {
    match out_dir {
        None => to_stdout(&man_page()),
        Some(dir) => {
            let mut list = String::new();
            for path in write_man_pages(dir)? {
                list.push_str(&format!("{}\n", path.display()));
            }
            to_stdout(list.as_bytes())
        }
    }
}

/// `ringway completions SHELL`: the script on stdout.
pub fn completions(shell: clap_complete::Shell) -> io::Result<()> {
    to_stdout(&completion_script(shell))
}

/// Write `bytes` to stdout; a reader that has gone away is not an error.
fn to_stdout(bytes: &[u8]) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| io::Error::new(e.kind(), format!("writing to stdout: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_every_subcommand_but_help() {
        let page = String::from_utf8(man_page()).unwrap();
        assert!(page.contains("\n.TH ringway 1 "), "{page}");
        for sub in ["demo", "check", "man", "completions"] {
            assert!(page.contains(&format!("ringway\\-{sub}(1)")), "{sub}");
        }
        assert!(!page.contains("ringway\\-help"), "{page}");
    }

    #[test]
    fn one_page_per_subcommand() {
        let dir = std::env::temp_dir().join(format!("ringway-man-{}", std::process::id()));
        let written = write_man_pages(&dir).unwrap();
        let names: Vec<String> = written
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "ringway.1",
                "ringway-demo.1",
                "ringway-check.1",
                "ringway-man.1",
                "ringway-completions.1"
            ]
        );
        let check = std::fs::read_to_string(dir.join("ringway-check.1")).unwrap();
        assert!(check.contains(".TH ringway-check 1"), "{check}");
        assert!(check.contains("\\-\\-upstream"), "{check}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_shell_gets_a_script() {
        use clap::ValueEnum;
        for shell in clap_complete::Shell::value_variants() {
            let script = String::from_utf8(completion_script(*shell)).unwrap();
            assert!(script.contains("upstream"), "{shell}: {script}");
        }
    }
}
