//! The six services as the `dozen` command knows them: name, port under `dozen up`, whether
//! they own a database, and how to run one in this process.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::ValueEnum;
use dozen_kit::Service as _;
use dozen_kit::service::run_from_args;

/// A service of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceName {
    /// The public entry and web UI.
    Gateway,
    /// Signups.
    Signup,
    /// Profiles.
    Users,
    /// Credentials and sessions.
    Passwords,
    /// Email verification.
    Verification,
    /// Friendships and suggestions.
    Friends,
}

impl ServiceName {
    /// Every service, in start order (the gateway last, so it meets ready peers).
    pub const ALL: [ServiceName; 6] = [
        Self::Users,
        Self::Passwords,
        Self::Verification,
        Self::Friends,
        Self::Signup,
        Self::Gateway,
    ];

    /// Its name, as in logs and `<NAME>_URL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => dozen_gateway::Gateway::NAME,
            Self::Signup => dozen_signup::Signup::NAME,
            Self::Users => dozen_users::Users::NAME,
            Self::Passwords => dozen_passwords::Passwords::NAME,
            Self::Verification => dozen_verification::Verification::NAME,
            Self::Friends => dozen_friends::Friends::NAME,
        }
    }

    /// Its port when nothing overrides it.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Gateway => dozen_gateway::Gateway::DEFAULT_PORT,
            Self::Signup => dozen_signup::Signup::DEFAULT_PORT,
            Self::Users => dozen_users::Users::DEFAULT_PORT,
            Self::Passwords => dozen_passwords::Passwords::DEFAULT_PORT,
            Self::Verification => dozen_verification::Verification::DEFAULT_PORT,
            Self::Friends => dozen_friends::Friends::DEFAULT_PORT,
        }
    }

    /// Whether it owns a database (every service but the gateway).
    pub fn has_database(self) -> bool {
        self != Self::Gateway
    }

    /// Run it in this process with `args` after the program name, as its binary would.
    pub fn run(self, args: Vec<OsString>) -> ExitCode {
        let program = OsString::from(format!("dozen-{}", self.as_str()));
        let args = std::iter::once(program).chain(args);
        match self {
            Self::Gateway => run_from_args::<dozen_gateway::Gateway>(args),
            Self::Signup => run_from_args::<dozen_signup::Signup>(args),
            Self::Users => run_from_args::<dozen_users::Users>(args),
            Self::Passwords => run_from_args::<dozen_passwords::Passwords>(args),
            Self::Verification => run_from_args::<dozen_verification::Verification>(args),
            Self::Friends => run_from_args::<dozen_friends::Friends>(args),
        }
    }
}
