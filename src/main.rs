//! `ringway`: flags (and --config file) -> Settings -> run -> exit code.

use std::process::ExitCode;

use ringway::config::{self, CliError, Command, Settings};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match config::parse_cli(argv.iter().cloned()) {
        Ok(cli) => cli,
        Err(CliError::Usage(e)) => e.exit(),
        Err(CliError::Config(e)) => {
            eprintln!("ringway: {e}");
            return ExitCode::from(2);
        }
    };
    ringway::ops::errlog::init(cli.log_level, cli.log_format);
    let cores = core_affinity::get_core_ids().map_or(1, |c| c.len());
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Some(Command::Demo(args)) => ringway::demo::run(&args, cores).map_err(Into::into),
        Some(Command::Man(args)) => config::docs::man(args.out_dir.as_deref()).map_err(Into::into),
        Some(Command::Completions(args)) => {
            config::docs::completions(args.shell).map_err(Into::into)
        }
        Some(Command::Check(args)) => {
            return match Settings::from_args(&args.proxy, cores) {
                Ok(settings) => {
                    print!("configuration OK\n{}", settings.describe());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ringway: {e}");
                    ExitCode::from(2)
                }
            }
        }
        None => match Settings::from_args(&cli.proxy, cores) {
            Ok(settings) => ringway::server::run(settings, argv, cores).map_err(Into::into),
            Err(e) => {
                eprintln!("ringway: {e}");
                return ExitCode::from(2);
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("ringway: {e}");
            ExitCode::FAILURE
        }
    }
}
