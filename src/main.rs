//! The `rexray` binary: everything happens in [`rexray::cli`].

fn main() -> std::process::ExitCode {
    rexray::cli::main()
}
