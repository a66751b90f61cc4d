//! The `dozen` command: one binary that carries the whole release.
//!
//! - `dozen up` runs the platform on one machine: every service as its own OS process on the
//!   embedded defaults (or on Postgres and NATS when told so), one merged log stream,
//!   migrations first, crashed services restarted ([`up`]).
//! - `dozen run <service> [serve|migrate]` runs one service exactly as its own binary would
//!   ([`services`]).
//! - `dozen keys [folder]` makes each service's identity key and the trust bundle of them
//!   all, for a deployment ([`keys`]).
//! - `dozen load --url <gateway>` sends an open-loop load of a realistic mix to any dozen
//!   deployment and reports each endpoint's latency ([`load`]).
//! - `dozen nats-authorization` prints the NATS server configuration that gives each service a
//!   login of its own, allowed only the subjects of its events.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dozen_kit::config::{self, Parsed};

pub mod keys;
pub mod load;
pub mod services;
pub mod up;

use services::ServiceName;

/// dozen: a signup platform of six microservices, run with one command.
#[derive(Debug, Parser)]
#[command(name = "dozen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform: every service as its own process, one log stream.
    Up(up::UpSettings),
    /// Run one service as its own binary would (`dozen run users migrate`); every argument
    /// after the name goes to the service (`dozen run users --help` lists its settings).
    Run {
        /// Which service.
        #[arg(value_enum)]
        service: ServiceName,
        /// The service's own command line.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Make each service's identity key (`<service>.pem`, its SERVICE_SIGNING_KEYS) in a
    /// folder, unless there, and the trust bundle of them all (`service-keys.json`, everyone's
    /// SERVICE_KEYS).
    Keys(keys::KeysSettings),
    /// Load any dozen deployment at a fixed arrival rate with a realistic mix of requests, and
    /// report each endpoint's latency (`dozen load --url http://127.0.0.1:8080 --rate 200`).
    Load(load::LoadSettings),
    /// Print the `authorization` block of a NATS server configuration: a login per service
    /// (password from `<SERVICE>_NATS_PASSWORD` in the server's environment) that may publish
    /// only the events the service publishes and read only its own consumers and replies.
    NatsAuthorization {
        /// The platform's BUS_NAMESPACE.
        #[arg(long, default_value = "dozen", value_parser = dozen_bus::settings::parse_namespace)]
        namespace: String,
    },
}

/// The whole `main` of the `dozen` binary.
pub fn main() -> ExitCode {
    let cli = match config::parse::<Cli>(std::env::args_os(), |command| command) {
        Ok(Parsed::Run(cli)) => cli,
        Ok(Parsed::Info(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("dozen: {error}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Run { service, args } => service.run(args),
        Command::Up(settings) => up::main(settings),
        Command::Keys(settings) => keys::main(settings),
        Command::Load(settings) => load::main(settings),
        Command::NatsAuthorization { namespace } => {
            print!("{}", dozen_bus::backend::nats::server_authorization(&namespace));
            ExitCode::SUCCESS
        }
    }
}
