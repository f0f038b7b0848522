//! Bad input: each gets exit code 2 (configuration) or 1 (environment) and
//! a message naming the problem.

use crate::harness::*;

fn write(dir: &std::path::Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

const GOOD: &str = "version: 1\nname: t\nsource:\n  type: postgres\n  url: postgres://postgres@127.0.0.1:1/postgres\ntables:\n  include: [\"public.*\"]\nsink:\n  type: blackhole\n";

#[tokio::test]
async fn malformed_pipelines_exit_2_with_pointed_messages() {
    let dir = std::env::temp_dir().join(format!("sluice-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("missing.yaml", String::new(), vec!["cannot read the file"]),
        ("syntax.yaml", "version: 1\nname: [unclosed\n".into(), vec!["YAML syntax"]),
        ("unknown_top.yaml", format!("{GOOD}colour: blue\n"), vec!["unknown key `colour`", "line 10"]),
        (
            "unknown_nested.yaml",
            GOOD.replace("  type: blackhole\n", "  type: blackhole\n  speed: 11\n"),
            vec!["speed", "line 10"],
        ),
        (
            "unset_var.yaml",
            GOOD.replace("127.0.0.1:1", "${SLUICE_SURELY_UNSET_VAR}"),
            vec!["SLUICE_SURELY_UNSET_VAR", "not set"],
        ),
        (
            "bad_format.yaml",
            GOOD.replace("  type: blackhole\n", "  type: files\n  format: csv\n  path: o\n"),
            vec!["csv", "jsonl"],
        ),
        ("bad_sink.yaml", GOOD.replace("type: blackhole", "type: s3"), vec!["s3"]),
        ("no_tables.yaml", GOOD.replace("[\"public.*\"]", "[]"), vec!["tables.include"]),
        ("bad_glob.yaml", GOOD.replace("\"public.*\"", "\"orders\""), vec!["schema.table"]),
        ("bad_version.yaml", GOOD.replace("version: 1", "version: 7"), vec!["version"]),
        ("bad_url.yaml", GOOD.replace("postgres://postgres@127.0.0.1:1/postgres", "mysql://x"), vec!["source.url"]),
        ("bad_slot.yaml", GOOD.replace("  url:", "  slot: Bad-Slot\n  url:"), vec!["source.slot"]),
        (
            "kafka_bad.yaml",
            GOOD.replace(
                "  type: blackhole\n",
                "  type: kafka\n  brokers: 127.0.0.1:1\n  topic: \"x y.{colour}\"\n  partitions: 0\n  producer:\n    enable.idempotence: false\n    acks: 1\n    max.in.flight: 10\n    linger.ms: 20\n",
            ),
            vec![
                "6 problems",
                "{colour}",
                "sink.partitions",
                "sink.producer.enable.idempotence: false turns off the idempotent producer",
                "sink.producer.acks: 1 gives up",
                "sink.producer.max.in.flight: 10",
                "delivery: at_least_once",
                "topic name",
            ],
        ),
        (
            "kafka_avro.yaml",
            GOOD.replace("  type: blackhole\n", "  type: kafka\n  brokers: 127.0.0.1:1\n  format: avro\n"),
            vec!["sink.schema_registry: required for format: avro"],
        ),
        // The documented limits.
        ("parallelism_0.yaml", format!("{GOOD}snapshot:\n  parallelism: 0\n"), vec!["snapshot.parallelism: 0 must be between 1 and 64"]),
        ("parallelism_65.yaml", format!("{GOOD}snapshot:\n  parallelism: 65\n"), vec!["snapshot.parallelism: 65 must be between 1 and 64"]),
        ("long_name.yaml", GOOD.replace("name: t\n", &format!("name: {}\n", "n".repeat(51))), vec!["name: must be 1 to 50 characters"]),
        (
            "roll_zero.yaml",
            GOOD.replace("  type: blackhole\n", "  type: files\n  format: jsonl\n  path: o\n  roll:\n    bytes: 0\n"),
            vec!["sink.roll: rows, bytes and seconds must be positive"],
        ),
        (
            "many.yaml",
            GOOD.replace("version: 1", "version: 9").replace("[\"public.*\"]", "[]"),
            vec!["2 problems", "version", "tables.include"],
        ),
    ];
    for (file, body, needles) in cases {
        let path = if body.is_empty() { dir.join(file).display().to_string() } else { write(&dir, file, &body) };
        for cmd in ["run", "check"] {
            let r = sluice(&[cmd, &path]).await;
            assert_eq!(r.code, 2, "{cmd} {file}: expected exit 2, got {}:\n{}", r.code, r.stderr);
            assert!(r.stderr.starts_with("error: "), "{file}: {}", r.stderr);
            for n in &needles {
                assert!(r.stderr.contains(n), "{cmd} {file}: message lacks {n:?}:\n{}", r.stderr);
            }
            assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        }
    }
    // Usage errors are exit 2 too.
    let r = sluice(&["run"]).await;
    assert_eq!(r.code, 2);
    let r = sluice(&["teardown", &write(&dir, "td.yaml", GOOD)]).await;
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--yes"), "{}", r.stderr);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_host_and_wrong_password_fail_clearly() {
    let dir = std::env::temp_dir().join(format!("sluice-unreach-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Nothing listens on port 1.
    let p = write(&dir, "unreach.yaml", GOOD);
    let r = sluice(&["run", &p, "--until-caught-up"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("cannot connect to Postgres at postgres@127.0.0.1:1/postgres"), "{}", r.stderr);
    let r = sluice(&["check", &p]).await;
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("FAIL") && r.stdout.contains("cannot connect"), "{}", r.stdout);

    let env = Env::new("auth");
    let c = env.client().await;
    c.batch_execute("SET password_encryption = 'scram-sha-256'; CREATE ROLE app LOGIN REPLICATION PASSWORD 'right'; CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t OWNER TO app")
        .await
        .unwrap();
    env.pg
        .prepend_hba("host all app 127.0.0.1/32 scram-sha-256\nhost replication app 127.0.0.1/32 scram-sha-256")
        .unwrap();
    let body = |pw: &str| {
        GOOD.replace(
            "postgres://postgres@127.0.0.1:1/postgres",
            &format!("postgres://app:{pw}@127.0.0.1:{}/postgres", env.pg.port),
        )
    };
    let bad = write(&env.dir, "badpw.yaml", &body("wrong"));
    let r = sluice(&["run", &bad, "--until-caught-up"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("password authentication failed for user \"app\""), "{}", r.stderr);
    assert!(r.stderr.contains("check the user and password"), "{}", r.stderr);
    // The right password works through SCRAM on both connection kinds; the
    // missing CREATE privilege for the publication is found by `check`.
    let good = write(
        &env.dir,
        "goodpw.yaml",
        &format!("{}checkpoint:\n  path: {}\n", body("right"), env.dir.join("st").display()),
    );
    let r = sluice(&["check", &good]).await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("GRANT CREATE ON DATABASE"), "{}", r.stdout);
    c.batch_execute("GRANT CREATE ON DATABASE postgres TO app").await.unwrap();
    let r = sluice(&["check", &good]).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let r = sluice(&["run", &good, "--until-caught-up"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfigured_server_is_reported() {
    let env = Env::with_settings("walreplica", &[("wal_level", "replica")]);
    let c = env.client().await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY)").await.unwrap();
    let p = env.pipeline("w", &["public.*"], "  type: blackhole\n", "");
    let r = sluice(&["check", p.to_str().unwrap()]).await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("wal_level = replica; set wal_level = logical"), "{}", r.stdout);
    let r = sluice(&["run", p.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("wal_level"), "{}", r.stderr);
}
