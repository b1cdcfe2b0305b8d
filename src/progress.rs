//! Progress bars on stderr (indicatif), shown only on a terminal.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress display for a run; invisible when stderr is not a terminal or
/// when disabled (`--quiet`, `--json`).
#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    /// Visible bars when `enabled` and stderr is a terminal.
    pub fn new(enabled: bool) -> Self {
        let visible = enabled && std::io::stderr().is_terminal();
        Self {
            multi: visible.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }

    /// A hidden progress display.
    pub fn hidden() -> Self {
        Self { multi: None }
    }

    /// A bar counting batches of one table.
    pub fn table_bar(&self, name: &str, batches: u64) -> ProgressBar {
        match &self.multi {
            None => ProgressBar::hidden(),
            Some(m) => {
                let bar = m.add(ProgressBar::new(batches));
                let style = ProgressStyle::with_template(
                    "{prefix:>24} [{bar:30}] {pos}/{len} batches {elapsed}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
                bar.set_style(style);
                bar.set_prefix(name.to_string());
                bar
            }
        }
    }

    /// A spinner counting rows (fetch/restore).
    pub fn rows_spinner(&self, what: &str) -> ProgressBar {
        match &self.multi {
            None => ProgressBar::hidden(),
            Some(m) => {
                let bar = m.add(ProgressBar::new_spinner());
                let style =
                    ProgressStyle::with_template("{spinner} {msg} {pos} rows {per_sec} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner());
                bar.set_style(style);
                bar.set_message(what.to_string());
                bar
            }
        }
    }
}
