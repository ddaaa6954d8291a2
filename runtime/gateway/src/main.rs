//! The `tbgw` command line.
//!
//! Exit codes: 0 success; 1 the work ran but some of it failed (a message
//! did not convert); 2 the command could not run (bad arguments, unreadable
//! files, an invalid converter or converter config).

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "tbgw", version, about = "An IoT gateway for ThingsBoard with WebAssembly converters")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a configuration file, until SIGINT or SIGTERM.
    Run(cli::run::RunArgs),
    /// Watch the gateway at work without ThingsBoard: an embedded broker,
    /// simulated devices and the real pipeline, until Ctrl-C.
    Demo(cli::demo::Args),
    /// Check a configuration file (and its converters) without starting.
    CheckConfig(cli::run::CheckArgs),
    /// Try converters on sample messages, and inspect converter components.
    #[command(subcommand)]
    Converter(ConverterCommand),
    /// Messages kept because they failed to convert: list, replay, purge
    /// (with the gateway stopped).
    #[command(subcommand)]
    DeadLetters(cli::dead_letters::Command),
}

#[derive(Subcommand)]
enum ConverterCommand {
    /// Create a converter project in Rust, Python or JavaScript: the
    /// contract, a helper, a build script, a sample and its test.
    New(cli::new::Args),
    /// Run a converter on sample input and print what ThingsBoard would get.
    Test(cli::converter_test::Args),
    /// Show which converter world a component implements and what it imports.
    Inspect(cli::inspect::Args),
}

fn main() -> ExitCode {
    tbgw::memory::limit_arenas();
    let cli = Cli::parse();
    cli::init_logging(match cli.command {
        Command::Run(_) => cli::Logging::Service,
        Command::Demo(_) => cli::Logging::Demo,
        _ => cli::Logging::Tool,
    });
    match cli.command {
        Command::Run(args) => cli::run::run(args),
        Command::Demo(args) => cli::demo::run(args),
        Command::CheckConfig(args) => cli::run::check(args),
        Command::Converter(ConverterCommand::New(args)) => cli::new::run(args),
        Command::Converter(ConverterCommand::Test(args)) => cli::converter_test::run(args),
        Command::Converter(ConverterCommand::Inspect(args)) => cli::inspect::run(args),
        Command::DeadLetters(command) => cli::dead_letters::run(command),
    }
}
