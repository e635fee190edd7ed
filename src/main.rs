//! The `bridgehead` command: run the SBC, or check a profile and its scripts.

use bridgehead::config::Profile;
use bridgehead::script::{RuleMetrics, Rules};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Bridgehead: a programmable SBC with Lua interworking rules.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the SBC on a profile.
    Run {
        /// The profile (YAML).
        #[arg(long, default_value = "profiles/default.yaml")]
        profile: PathBuf,
    },
    /// Validate a profile and the scripts it names; prints each error as file:line.
    Check {
        /// The profile (YAML).
        #[arg(long, default_value = "profiles/default.yaml")]
        profile: PathBuf,
    },
}

/// Loads a profile and compiles its rules once, to report every error before anything runs.
fn load(path: &Path) -> Result<Profile, Vec<String>> {
    let profile = Profile::load(path)
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    Rules::load(&profile, Arc::new(RuleMetrics::default()))
        .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    Ok(profile)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { profile } => match load(&profile) {
            Ok(profile) => {
                println!(
                    "{}: ok ({} listeners, {} trunks)",
                    profile.path.display(),
                    profile.listeners.len(),
                    profile.trunks.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for error in errors {
                    eprintln!("{error}");
                }
                ExitCode::FAILURE
            }
        },
        Command::Run { profile } => {
            let profile = match load(&profile) {
                Ok(profile) => profile,
                Err(errors) => {
                    for error in errors {
                        eprintln!("{error}");
                    }
                    eprintln!("bridgehead: not started: the profile is invalid");
                    return ExitCode::FAILURE;
                }
            };
            match bridgehead::runtime::run(profile) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("bridgehead: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
