//! `permafrost demo` from scratch, and its printed PyIceberg command.

use std::process::Command;

use crate::common::*;
use crate::services;

#[tokio::test(flavor = "multi_thread")]
#[cfg_attr(not(services), ignore = "needs the test services: run scripts/test")]
async fn demo_runs_and_its_pyiceberg_command_works() {
    let s = services!();
    let ws = Ws::new();
    // No --dsn: the demo starts (and removes) its own throwaway PostgreSQL.
    let out = ws.run(&["demo", "--dir", "demo", "--rows", "20000"]);
    assert_eq!(out.code, 0, "demo failed:\n{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("public.sensor_readings -> archive.sensor_readings"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("SNAPSHOT"),
        "snapshots listed:\n{}",
        out.stdout
    );
    let cmd = out
        .stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("python3 -c"))
        .unwrap_or_else(|| panic!("no PyIceberg command printed:\n{}", out.stdout));
    let code = cmd.trim_start_matches("python3 -c ").trim_matches('"');
    let py = Command::new(&s.python)
        .arg("-c")
        .arg(code)
        .current_dir(ws.path())
        .output()
        .expect("python");
    let text = String::from_utf8_lossy(&py.stdout);
    assert!(
        py.status.success(),
        "printed command failed:\n{}",
        String::from_utf8_lossy(&py.stderr)
    );
    let rows: i64 = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(-1);
    assert!(
        rows > 10_000 && rows < 20_000,
        "rows read by PyIceberg: {text}"
    );
    assert!(
        text.contains("permafrost.batch-id"),
        "summary printed: {text}"
    );
    // The status the demo printed agrees.
    assert!(
        out.stdout
            .contains(&permafrost::cli::output::num(rows as u64)),
        "{}",
        out.stdout
    );
    assert!(ws.path().join("demo/permafrost.yaml").exists());
}
