//! The `--config` TOML file: its settings turned into command-line
//! arguments for the flags' parser, so that the file says nothing a flag
//! could not. Each key is a flag's long name (`_` or `-`), each value that
//! flag's value: `true` for a switch, a list for a repeatable flag. Settings
//! the command line gives itself are left out (the flag wins, a list flag
//! replaces the file's whole list). Merging the two is `cli::parse_cli`'s.

use std::ffi::OsString;
use std::path::Path;

use crate::config::error::FileError;

/// The `--config` file's settings as arguments for `cmd` (the flags'
/// parser), leaving out those for which `on_command_line` (given a flag's
/// id) says the command line sets them itself. `--log-level` and
/// `--config` cannot be set from the file.
pub(super) fn arguments(
    file: &Path,
    mut cmd: clap::Command,
    on_command_line: &dyn Fn(&str) -> bool,
) -> Result<Vec<OsString>, FileError> {
    let text = std::fs::read_to_string(file).map_err(FileError::Read)?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        // toml's message is "at line L, column C", the line with a caret
        // under it, then the reason: keep the first and the last.
        let text = e.to_string();
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.next().unwrap_or_default();
        FileError::Syntax(match lines.next_back() {
            Some(reason) => format!("{first}: {reason}"),
            None => first.to_string(),
        })
    })?;
    cmd.build();
    let mut out = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "log-level")
            .filter(|a| a.get_id() != "config")
            .ok_or_else(|| FileError::UnknownSetting(key.clone()))?;
        if on_command_line(arg.get_id().as_str()) {
            continue;
        }
        let flag = !arg.get_action().takes_values();
        let many = matches!(arg.get_action(), clap::ArgAction::Append);
        let scalar = |v: &toml::Value| -> Result<String, FileError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                _ => Err(FileError::NotScalar(key.clone())),
            }
        };
        match value {
            toml::Value::Boolean(b) if flag => {
                if *b {
                    out.push(format!("--{long}").into());
                }
            }
            _ if flag => return Err(FileError::NotBool(key.clone())),
            toml::Value::Array(items) if many => {
                for item in items {
                    out.push(format!("--{long}").into());
                    out.push(scalar(item)?.into());
                }
            }
            toml::Value::Array(_) => return Err(FileError::NotList(key.clone())),
            v => {
                out.push(format!("--{long}").into());
                out.push(scalar(v)?.into());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::config::cli::{parse_cli, CliError, Command};
    use crate::config::{ConfigError, Settings};

    /// A TOML file in a fresh temp directory.
    fn toml_file(name: &str, text: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ringway-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ringway.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn config_file_under_flags() {
        let file = toml_file(
            "ok",
            "upstream = [\"chat=127.0.0.1:9000\", \"chat=127.0.0.1:9001\"]\n\
             route = [\"/ws/=chat\"]\n\
             idle_timeout = \"2h\"\n\
             no-pin = true\n\
             workers = 3\n",
        );
        let f = file.to_str().unwrap();
        let cli = parse_cli(["ringway", "--config", f]).unwrap();
        let Settings {
            startup: s,
            config: c,
        } = Settings::from_args(&cli.proxy, 4).unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(7200));
        assert_eq!((s.workers, s.pin), (3, false));
        assert_eq!(c.groups[0].servers.len(), 2);
        // A flag replaces the file's setting of the same name, lists whole.
        let cli = parse_cli([
            "ringway",
            "--idle-timeout",
            "5m",
            "--config",
            f,
            "--upstream",
            "chat=127.0.0.1:9100",
        ])
        .unwrap();
        let c = Settings::from_args(&cli.proxy, 4).unwrap().config;
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.groups[0].servers.len(), 1);
        assert_eq!(c.groups[0].servers[0].addr.port(), 9100);
        // `check` reads it too.
        let cli = parse_cli(["ringway", "check", "--config", f]).unwrap();
        let Some(Command::Check(check)) = cli.command else {
            panic!("not check")
        };
        assert_eq!(check.proxy.workers, Some(3));
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }

    #[test]
    fn config_file_mistakes_name_the_file() {
        for (name, text, needle) in [
            ("unknown", "colour = \"blue\"\n", "unknown setting"),
            ("list", "idle-timeout = [\"1h\", \"2h\"]\n", "not a list"),
            ("syntax", "upstream = [\n", ""),
            ("value", "idle-timeout = \"soon\"\n", "soon"),
            ("flag", "no-pin = \"yes\"\n", "true or false"),
            ("nested", "config = \"other.toml\"\n", "unknown setting"),
            ("table", "[groups]\nx = 1\n", "unknown setting"),
            (
                "nested-value",
                "upstream = [[\"a\"]]\n",
                "expected a string",
            ),
        ] {
            let file = toml_file(name, text);
            let f = file.to_str().unwrap();
            match parse_cli(["ringway", "--config", f]) {
                Err(CliError::Config(e)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(f) && msg.contains(needle), "{name}: {msg}");
                }
                other => panic!("{name}: {other:?}"),
            }
            let _ = std::fs::remove_dir_all(file.parent().unwrap());
        }
        let missing = parse_cli(["ringway", "--config", "/nonexistent/ringway.toml"]);
        assert!(matches!(
            missing,
            Err(CliError::Config(ConfigError::File(..)))
        ));
    }
}
