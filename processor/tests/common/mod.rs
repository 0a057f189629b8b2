//! What the binary's tests share: the binary with a clean environment, and
//! its output as text.

// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::process::{Command, Output};

/// The binary with a clean environment: no `SIKLUS_*` variable, no
/// backtrace or colour setting of the machine running the tests.
pub fn siklus() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_siklus"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SIKLUS_") {
            c.env_remove(k);
        }
    }
    c.env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env_remove("NO_COLOR");
    c
}

/// Writes `siklus generate`'s synthetic events of `customers` customers
/// (seed `seed`) to `path`, failing the test with its stderr if it fails.
pub fn generate(path: &std::path::Path, customers: u32, seed: u64) {
    let o = siklus()
        .args(["generate", "--customers"])
        .arg(customers.to_string())
        .arg("--seed")
        .arg(seed.to_string())
        .arg("--output")
        .arg(path)
        .output()
        .expect("siklus generate runs");
    assert!(o.status.success(), "generate: {}", stderr(&o));
}

/// Standard error of a finished run.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Standard output of a finished run.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
