//! The `explorer` binary: `explorer serve` and the user CLI. Exit codes:
//! 0 ok, 1 refused (bad flags, a 4xx, a signature that does not verify),
//! 2 explorer unreachable, failing, or busy (503 with Retry-After).

mod cli;

use clap::Parser;

fn main() {
    let parsed = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // clap exits 2 on a usage error; here 2 means "unreachable".
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(cli::run(parsed)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<cli::client::Unreachable>().is_some() {
                2
            } else {
                1
            }
        }
    };
    std::process::exit(code);
}
