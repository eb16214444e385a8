//! `bootstrap-sandbox`: the local stand-in for the Google APIs as a binary of its own (users
//! start it as `bootstrap sandbox`, which runs this binary).

fn main() -> std::process::ExitCode {
    gcp_sandbox::cli::main()
}
