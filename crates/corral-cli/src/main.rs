//! The `corral` command.
//!
//! Exit status, as `timeout(1)` users expect: the command's own status; 128+N when it
//! died of signal N (an OOM kill is 137); 124 when corral stopped it at its wall-clock
//! or CPU-time limit; 125 when corral itself failed (bad input, no cgroup access,
//! `--require-isolation` refused); 126 command not executable; 127 command not found.

/// `println!` that returns the write's error instead of panicking, so a closed pipe
/// (`corral ps | head`) reaches [`main`], which ends quietly on it.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($t)*)
    }};
}

mod args;
mod backend;
mod check;
mod docs;
mod gc;
mod live;
mod plot;
mod profiles;
mod run;
mod service;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// corral runs each analysis in its own cgroup with a memory limit, a CPU quota, a
/// process limit and a wall clock, kills its whole process tree when it goes over
/// budget, and says exactly what happened and what was used.
#[derive(Debug, Parser)]
#[command(name = "corral", version, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one command under limits and report what happened.
    Run(Box<run::RunCmd>),
    /// Print the effective profiles (built-in, then /etc/corral, then the user's file).
    Profiles(profiles::ProfilesArgs),
    /// Report what isolation this host offers (exit 0 full, 1 partial, 2 none).
    Check(check::CheckArgs),
    /// Kill and remove runs left behind by corral processes that died.
    Gc(gc::GcArgs),
    /// Internal: the crash guard of a supervising corral (see docs/architecture.md).
    #[command(name = "__guard", hide = true)]
    Guard,
    /// Run the corral service: queue runs under one cgroup budget, keep a ledger.
    Serve(Box<service::ServeArgs>),
    /// Submit a run to the corral service; prints its id (--wait: exits like `run`).
    Submit(Box<service::SubmitCmd>),
    /// List the service's runs.
    Ps(service::PsCmd),
    /// Wait for a run and exit with its status.
    Wait(service::IdCmd),
    /// Cancel a queued or running run.
    Cancel(service::IdCmd),
    /// Print a run's captured output.
    Logs(service::LogsCmd),
    /// Show a run's status and result (--json: the corral.result/v1 record).
    Show(service::ShowCmd),
    /// Print a shell completion script (bash, zsh, fish) to stdout.
    Completions(docs::CompletionsArgs),
    /// Write the man pages, corral(1) and one per subcommand, into a directory.
    #[command(hide = true)]
    Man(docs::ManArgs),
}

/// Exit status for corral's own failures.
pub const EXIT_CORRAL_FAILED: u8 = 125;

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORRAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colours only for a person at a terminal: a log in a file or journald gets none.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .init();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => EXIT_CORRAL_FAILED,
            };
            // Lossy: only `run` and its `--json` value are looked for.
            let args: Vec<String> = std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            if code != 0 {
                if let Some(dest) = run::json_dest_of(&args) {
                    let text = e.render().to_string();
                    let first = text.lines().next().unwrap_or_default();
                    let msg = first.strip_prefix("error: ").unwrap_or(first);
                    let accepted = text
                        .lines()
                        .find_map(|l| l.trim().strip_prefix("[possible values: "));
                    let msg = match accepted {
                        Some(v) => format!("{msg}; possible values: {}", v.trim_end_matches(']')),
                        None => msg.to_string(),
                    };
                    run::write_error_file(dest, &msg);
                }
            }
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // Commands that only print: a closed pipe on their output ends them quietly.
    // (`corral run` keeps the command's status, `serve` and the guard print nothing.)
    let printer = !matches!(
        cli.command,
        Command::Run(_) | Command::Serve(_) | Command::Guard
    );
    let result = match cli.command {
        Command::Run(a) => run::main(*a),
        Command::Profiles(a) => profiles::main(a),
        Command::Gc(a) => gc::main(a),
        Command::Check(a) => check::main(a),
        Command::Guard => corral_run::guard::guard_main(),
        Command::Serve(a) => service::serve(*a),
        Command::Submit(a) => service::submit(*a),
        Command::Ps(a) => service::ps(a),
        Command::Wait(a) => service::wait(a),
        Command::Cancel(a) => service::cancel(a),
        Command::Logs(a) => service::logs(a),
        Command::Show(a) => service::show_cmd(a),
        Command::Completions(a) => docs::completions(a),
        Command::Man(a) => docs::man(a),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        // The reader went away (`corral ps | head`): it has all it wanted.
        Err(e) if printer && closed_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corral: {e:#}");
            ExitCode::from(EXIT_CORRAL_FAILED)
        }
    }
}

/// True when `e` comes from writing to a pipe whose reader has gone.
fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .and_then(|j| j.io_error_kind())
                == Some(std::io::ErrorKind::BrokenPipe)
    })
}
