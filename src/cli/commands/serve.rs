//! `serve` (the HTTP API, feature `query`).

use super::*;

#[cfg(not(feature = "query"))]
pub(super) async fn serve_cmd(_a: ServeArgs) -> Result<ExitCode> {
    Err(Error::new(
        ErrorKind::Config,
        "this permafrost was built without the HTTP API (cargo feature `query`)",
    )
    .with_hint("install it with `cargo install --path . --features query`"))
}

#[cfg(feature = "query")]
pub(super) async fn serve_cmd(a: ServeArgs) -> Result<ExitCode> {
    if a.openapi {
        println!("{}", crate::serve::openapi::json());
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = load(&a.config.config)?;
    let listen = a
        .listen
        .as_deref()
        .map(|l| crate::config::parse_listen("--listen", l))
        .transpose()?;
    crate::serve::serve(
        cfg,
        crate::serve::ServeOptions {
            listen,
            insecure_no_auth: a.insecure_no_auth,
        },
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}
