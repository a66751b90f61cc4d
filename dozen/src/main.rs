fn main() -> std::process::ExitCode {
    dozen::main()
}
