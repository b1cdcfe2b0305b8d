//! Integration tests that need the test services (PostgreSQL, SeaweedFS,
//! moto) are compiled as ignored unless `scripts/test` says the services are
//! there (`PERMAFROST_TEST_SERVICES=1`), so a plain `cargo test` reports them
//! as ignored instead of counting them as passed.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(services)");
    println!("cargo::rerun-if-env-changed=PERMAFROST_TEST_SERVICES");
    if std::env::var_os("PERMAFROST_TEST_SERVICES").is_some_and(|v| v == "1") {
        println!("cargo::rustc-cfg=services");
    }
}
