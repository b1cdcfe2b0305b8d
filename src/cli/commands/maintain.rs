//! `maintain`.

use super::*;

pub(super) async fn maintain_cmd(a: MaintainArgs) -> Result<ExitCode> {
    let cfg = load(&a.config.config)?;
    let m = &cfg.maintenance;
    let older_than = match &a.older_than {
        Some(s) => crate::config::parse_duration(s)
            .map_err(|msg| Error::config(format!("--older-than: {msg}")))?,
        None => m.older_than,
    };
    if a.retain_last == Some(0) || a.max_manifests == Some(0) {
        return Err(Error::config(
            "--retain-last and --max-manifests must be at least 1",
        ));
    }
    let opts = crate::maintain::MaintainOptions {
        dry_run: a.dry_run,
        older_than,
        retain_last: a.retain_last.unwrap_or(m.retain_last),
        max_manifests: a.max_manifests.unwrap_or(m.max_manifests),
        compact: m.compact && !a.no_compact,
        orphan_older_than: match &a.orphan_older_than {
            Some(s) => crate::config::parse_duration(s)
                .map_err(|msg| Error::config(format!("--orphan-older-than: {msg}")))?,
            None => m.orphan_older_than,
        },
        now_ms: parse_now(a.now.as_deref())?
            .map_or_else(|| chrono::Utc::now().timestamp_millis(), |us| us / 1000),
    };
    let reports = crate::maintain::run(&cfg, a.table.as_deref(), &opts).await?;
    if a.json {
        output::json(&reports)?;
    } else {
        let rows: Vec<Vec<String>> = reports
            .iter()
            .map(|r| {
                vec![
                    r.source.clone(),
                    format!(
                        "{} -> {}",
                        r.snapshots_before,
                        r.snapshots_before - r.snapshots_expired
                    ),
                    format!("{} -> {}", r.data_manifests_before, r.data_manifests_after),
                    format!("{} -> {}", r.metadata_bytes_before, r.metadata_bytes_after),
                    match r.compacted.delete_files_removed {
                        0 => format!("{} -> {}", r.compacted.files_in, r.compacted.files_out),
                        n => format!(
                            "{} -> {} ({n} delete file(s) removed)",
                            r.compacted.files_in, r.compacted.files_out
                        ),
                    },
                    format!("{} ({} bytes)", r.orphan_files, r.orphan_bytes),
                ]
            })
            .collect();
        output::table(
            &[
                "TABLE",
                "SNAPSHOTS",
                "DATA MANIFESTS",
                "METADATA BYTES",
                "SMALL FILES",
                "ORPHAN FILES",
            ],
            &rows,
        );
        if a.dry_run {
            output::line("(dry run: nothing changed)");
        }
    }
    Ok(ExitCode::SUCCESS)
}
