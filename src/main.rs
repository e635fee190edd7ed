//! The `bridgehead` command: run the SBC, check a profile and its scripts, replay scenarios.

use bridgehead::config::Profile;
use bridgehead::script::{RuleMetrics, Rules};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// mimalloc instead of the system allocator: a message's life is many small allocations
/// (header vectors, strings, Lua values) freed moments later, and glibc's malloc and free took
/// about 16 % of the process at 4,000 calls/s (`docs/performance.md`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Bridgehead: a programmable SBC with Lua interworking rules.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to stderr: `text` (coloured only on a terminal, and never
    /// when NO_COLOR is set) or `json` (one object per line, for log shippers).
    #[arg(long, global = true, env = "RUST_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

/// The format of log lines.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr at `level` (or `RUST_LOG`), in `format`.
fn init_logging(level: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => {
            // https://no-color.org: set and not empty means no colour.
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            builder
                .with_ansi(std::io::stderr().is_terminal() && !no_color)
                .init();
        }
    }
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
    /// Replay scenarios (YAML files, or directories of them) through the rules offline, or
    /// one side of a capture (`--pcap`).
    Replay {
        /// Scenario files or directories.
        #[arg(required_unless_present = "pcap")]
        paths: Vec<PathBuf>,
        /// Write what Bridgehead sent as each step's expectations, rewriting the scenario file
        /// (its comments are lost; review the result before committing).
        #[arg(long)]
        record: bool,
        /// Also write a JUnit XML report.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// A capture (pcap or pcapng): feed the SIP one side sent through the rules.
        #[arg(long, conflicts_with_all = ["paths", "record", "junit"])]
        pcap: Option<PathBuf>,
        /// Which capture address is which trunk's peer: NAME=IP[:port] (repeat for both sides).
        #[arg(long = "trunk", requires = "pcap")]
        trunks: Vec<String>,
        /// The profile to run on. With scenarios: replaces each scenario's own `profile:` (to
        /// check scenarios against a candidate profile before it goes live; a `reload` step
        /// without a profile of its own reloads this one). With --pcap: default
        /// profiles/default.yaml.
        #[arg(long)]
        profile: Option<PathBuf>,
        /// With --pcap: print every message in full.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Ask a running Bridgehead through its admin API (the profile's `admin` section).
    Ctl {
        /// The admin server.
        #[arg(
            long,
            env = "BRIDGEHEAD_ADMIN_URL",
            default_value = "http://127.0.0.1:8480"
        )]
        url: String,
        /// A file holding the bearer token the server requires.
        #[arg(long, env = "BRIDGEHEAD_ADMIN_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// The CA (PEM) an `https://` server's certificate must chain to (default: the Mozilla
        /// roots).
        #[arg(long, env = "BRIDGEHEAD_ADMIN_CA_FILE")]
        ca_file: Option<PathBuf>,
        /// Print the API's JSON instead of tables.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        order: CtlOrder,
    },
    /// Run the rule unit tests (`*_test.lua` files) under a directory.
    Test {
        /// Where the rules and their tests are.
        #[arg(default_value = "scripts")]
        dir: PathBuf,
        /// The profile whose trunks the tests use.
        #[arg(long, default_value = "profiles/default.yaml")]
        profile: PathBuf,
    },
}

/// What `bridgehead ctl` asks.
#[derive(Subcommand)]
enum CtlOrder {
    /// Version, uptime, shards and calls.
    Status,
    /// The calls in progress.
    List,
    /// One call, by its A-leg or B-leg Call-ID.
    Show { call_id: String },
    /// Hang up a call (BYE with a Reason on both legs; 503 and CANCEL before the answer).
    Hangup { call_id: String },
    /// Reload the profile and its rules; prints the new version or why it was refused.
    Reload,
    /// Drain: refuse new calls, let those in progress run until `drain_timeout`, then stop.
    Drain,
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
    let cli = Cli::parse();
    // Offline commands print their own report; the log only says what went wrong.
    let level = match cli.command {
        Command::Run { .. } => "info",
        _ => "warn",
    };
    init_logging(level, cli.log_format);
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
        Command::Replay {
            pcap: Some(capture),
            trunks,
            profile,
            verbose,
            ..
        } => replay_capture(
            &capture,
            &profile.unwrap_or_else(|| PathBuf::from("profiles/default.yaml")),
            &trunks,
            verbose,
        ),
        Command::Replay {
            paths,
            record,
            junit,
            profile,
            ..
        } => replay(&paths, record, junit.as_deref(), profile.as_deref()),
        Command::Test { dir, profile } => rule_tests(&dir, &profile),
        Command::Ctl {
            url,
            token_file,
            ca_file,
            json,
            order,
        } => {
            use bridgehead::observe::ctl::{self, Order, Target};
            let token = match token_file.map(std::fs::read_to_string).transpose() {
                Ok(token) => token.map(|t| t.trim().to_string()),
                Err(err) => {
                    eprintln!("ctl: token file: {err}");
                    return ExitCode::from(2);
                }
            };
            let order = match order {
                CtlOrder::Status => Order::Status,
                CtlOrder::List => Order::List,
                CtlOrder::Show { call_id } => Order::Show(call_id),
                CtlOrder::Hangup { call_id } => Order::HangUp(call_id),
                CtlOrder::Reload => Order::Reload,
                CtlOrder::Drain => Order::Drain,
            };
            let target = Target {
                url,
                token,
                ca: ca_file,
                json,
            };
            ExitCode::from(ctl::run(&target, &order))
        }
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
            match bridgehead::run(profile) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("bridgehead: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `bridgehead replay`: runs every scenario, prints failures and a summary.
fn replay(
    paths: &[PathBuf],
    record: bool,
    junit: Option<&Path>,
    profile: Option<&Path>,
) -> ExitCode {
    let files = match bridgehead::replay::collect(paths) {
        Ok(files) if !files.is_empty() => files,
        Ok(_) => {
            eprintln!("no scenarios found (YAML files with a top-level `steps:` list)");
            return ExitCode::FAILURE;
        }
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let started = std::time::Instant::now();
    let outcomes = bridgehead::replay::run_all(&files, record, profile);
    let steps: usize = outcomes.iter().map(|o| o.steps).sum();
    let mut failed = 0;
    for outcome in &outcomes {
        if outcome.passed() {
            let verb = if record { "recorded" } else { "ok" };
            println!("{verb:>8}  {} ({} steps)", outcome.name, outcome.steps);
        } else {
            failed += 1;
            println!("  FAILED  {}", outcome.name);
            for failure in &outcome.failures {
                println!("{failure}");
            }
        }
    }
    let elapsed = started.elapsed();
    println!(
        "{} passed, {failed} failed ({steps} steps in {:.1} ms, {:.0} steps/s)",
        outcomes.len() - failed,
        elapsed.as_secs_f64() * 1000.0,
        steps as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    if let Some(path) = junit {
        if let Err(err) = std::fs::write(path, bridgehead::replay::junit(&outcomes)) {
            eprintln!("{}: {err}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `bridgehead test`: runs every `*_test.lua` under `dir`.
fn rule_tests(dir: &Path, profile: &Path) -> ExitCode {
    let profile = match Profile::load(profile) {
        Ok(profile) => profile,
        Err(errors) => {
            for error in errors {
                eprintln!("{error}");
            }
            return ExitCode::FAILURE;
        }
    };
    let files = bridgehead::script::unit::find_tests(dir);
    if files.is_empty() {
        eprintln!("no *_test.lua files under {}", dir.display());
        return ExitCode::FAILURE;
    }
    let (mut passed, mut failed) = (0, 0);
    for file in &files {
        for outcome in bridgehead::script::unit::run_test_file(file, &profile) {
            match &outcome.failure {
                None => {
                    passed += 1;
                    println!("      ok  {}: {}", file.display(), outcome.name);
                }
                Some(failure) => {
                    failed += 1;
                    println!("  FAILED  {}: {}\n{failure}", file.display(), outcome.name);
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `bridgehead replay --pcap`: one side of a capture through the rules, as a call flow.
fn replay_capture(capture: &Path, profile: &Path, trunks: &[String], verbose: bool) -> ExitCode {
    if trunks.is_empty() {
        eprintln!("--pcap needs at least one --trunk NAME=IP[:port] (whose messages to replay)");
        return ExitCode::FAILURE;
    }
    let sides: Result<Vec<_>, _> = trunks
        .iter()
        .map(|t| bridgehead::replay::pcap::TrunkSide::parse(t))
        .collect();
    let result = sides.and_then(|sides| {
        bridgehead::replay::pcap::replay_capture(capture, profile, &sides, verbose)
    });
    match result {
        Ok(flow) => {
            print!("{flow}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{err}");
            ExitCode::FAILURE
        }
    }
}
