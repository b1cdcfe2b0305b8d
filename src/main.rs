use std::process::ExitCode;

use clap::Parser;
use permafrost::cli::{Cli, commands};

fn main() -> ExitCode {
    let cli = Cli::parse();
    permafrost::http::install_crypto_provider();
    commands::init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(commands::run(cli))
}
