//! `chatctl`: see [`chat_ctl::USAGE`]. Thin: everything is in the library.

use chat_ctl::{USAGE, UsageError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut out = String::new();
    let result = chat_ctl::run(argv, chat_runtime::Env::from_process(), &mut out).await;
    print!("{out}");
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<UsageError>().is_some() => {
            eprintln!("chatctl: {e}\n\n{USAGE}");
            std::process::ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("chatctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
