//! The crate graph points one way: core ← schemas ← clients ← sources and
//! sinks; transforms ← core only; the test servers (testkit) stand alone;
//! the binary on top. Read from
//! `cargo metadata`, so a new dependency that breaks the rule fails here.

use std::collections::BTreeMap;

/// What each role may depend on (workspace crates only).
fn allowed(role: &str) -> &'static [&'static str] {
    match role {
        "core" => &[],
        "schemas" => &["core"],
        "client" => &["core", "schemas"],
        "source" | "sink" => &["core", "schemas", "client"],
        "transforms" => &["core"],
        "testkit" => &[],
        _ => &["core", "schemas", "client", "source", "sink", "transforms", "testkit"],
    }
}

fn role(name: &str) -> &'static str {
    match name {
        "sluice-core" => "core",
        "sluice-schemas" => "schemas",
        "sluice-transforms" => "transforms",
        "sluice-testkit" => "testkit",
        n if n.starts_with("sluice-client-") => "client",
        n if n.starts_with("sluice-source-") => "source",
        n if n.starts_with("sluice-sink-") => "sink",
        "sluice" => "binary",
        n => panic!("workspace crate {n} does not follow the naming rule (sluice-{{client,source,sink}}-*)"),
    }
}

#[test]
fn crate_graph_points_one_way() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let names: Vec<&str> = packages.iter().map(|p| p["name"].as_str().unwrap()).collect();
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap();
        for d in p["dependencies"].as_array().unwrap() {
            let dep = d["name"].as_str().unwrap();
            if !names.contains(&dep) {
                continue;
            }
            edges.entry(name).or_default().push(dep);
            if !allowed(role(name)).contains(&role(dep)) {
                wrong.push(format!("{name} ({}) depends on {dep} ({})", role(name), role(dep)));
            }
        }
    }
    assert!(wrong.is_empty(), "crate graph rule broken: {wrong:#?}");
    // The rule is not vacuous: the crates it speaks of exist and are wired.
    for (crate_, dep) in [
        ("sluice-source-postgres", "sluice-client-postgres"),
        ("sluice-sink-postgres", "sluice-client-postgres"),
        ("sluice-source-mysql", "sluice-client-mysql"),
        ("sluice-sink-mysql", "sluice-client-mysql"),
        ("sluice", "sluice-transforms"),
    ] {
        assert!(edges.get(crate_).is_some_and(|d| d.contains(&dep)), "{crate_} should depend on {dep}: {edges:#?}");
    }
}
