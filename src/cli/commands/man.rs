//! `man`: the man page.

use super::*;

pub(super) fn man_cmd() -> Result<ExitCode> {
    let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
    page.render(&mut std::io::stdout())
        .map_err(|e| Error::io("cannot write the man page", e))?;
    Ok(ExitCode::SUCCESS)
}
