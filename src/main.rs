use std::process::ExitCode;

fn main() -> ExitCode {
    bootstrap::main()
}
