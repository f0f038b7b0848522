//! DuckDB (from PyPI, in a virtual environment) for the tests that load
//! Sluice's columnar output the way a warehouse does.
//!
//! The Python interpreter with `duckdb` is found through
//! `$SLUICE_DUCKDB_PYTHON`, then `$XDG_CACHE_HOME/sluice/duckdb-<version>/bin/python`
//! (or `~/.cache/...`), which is created on first use.

use std::path::PathBuf;
use std::process::Command;

pub const DUCKDB_VERSION: &str = "2.0.1";

fn venv() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache"));
    base.join("sluice").join(format!("duckdb-{DUCKDB_VERSION}"))
}

/// A Python interpreter that can `import duckdb`, installing it when missing.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_DUCKDB_PYTHON") {
        return PathBuf::from(p);
    }
    let root = venv();
    let bin = root.join("bin/python");
    if bin.exists() {
        return bin;
    }
    std::fs::create_dir_all(root.parent().unwrap()).unwrap();
    let lock = root.parent().unwrap().join(format!(".duckdb-{DUCKDB_VERSION}.lock"));
    let status = Command::new("flock")
        .arg(&lock)
        .args(["sh", "-c"])
        .arg(format!(
            "[ -x '{bin}' ] || {{ rm -rf '{root}.tmp' && python3 -m venv '{root}.tmp' && \
             '{root}.tmp/bin/python' -m pip install -q 'duckdb=={DUCKDB_VERSION}' && mv '{root}.tmp' '{root}'; }}",
            bin = bin.display(),
            root = root.display()
        ))
        .status()
        .expect("run python3 -m venv / pip install duckdb");
    assert!(status.success() && bin.exists(), "cannot install duckdb {DUCKDB_VERSION} into {}", root.display());
    bin
}

/// Run a Python script (with `duckdb` importable) and return its stdout.
pub fn run_python(script: &str) -> String {
    let out = Command::new(python()).arg("-c").arg(script).output().expect("run python");
    assert!(
        out.status.success(),
        "python failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
