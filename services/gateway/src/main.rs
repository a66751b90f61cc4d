fn main() -> std::process::ExitCode {
    dozen_kit::service::main::<dozen_gateway::Gateway>()
}
