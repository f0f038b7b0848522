//! Parsing and validation of whole pipeline files.

use super::*;

const GOOD: &str = r#"
version: 1
name: orders
source:
  type: postgres
  url: postgres://u:${SLUICE_TEST_PW}@localhost:5432/db
tables:
  include: ["shop.*", "public.Odd Table"]
  exclude: ["shop.audit_*"]
sink:
  type: files
  format: jsonl
  path: ./out
"#;

#[test]
fn transforms_parse_and_validate() {
    let text = format!(
        "{GOOD}transforms:
  - filter:
      tables: [\"shop.orders\"]
      where: \"status <> 'test' AND amount >= 100\"
  - columns:
      tables: [\"shop.customers\"]
      exclude: [\"ssn\", \"internal_notes\"]
  - mask:
      tables: [\"shop.customers\"]
      columns: [\"email\", \"phone\"]
      with: sha256
      salt: ${{MASK_SALT}}
  - mask:
      columns: [card]
      with: keep_last(4)
  - mask:
      columns: [notes]
      with: null
  - rename:
      tables: [\"shop.*\"]
      to: \"analytics.{{table}}\"
      columns: {{amount: total}}
  - ops:
      tables: [\"shop.events\"]
      skip: [delete]
"
    );
    let cfg = parse_pipeline_text_with(&text, "t.yaml", |k| match k {
        "SLUICE_TEST_PW" => Some("pw".into()),
        "MASK_SALT" => Some("pepper".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(cfg.transforms.len(), 7);
    match &cfg.transforms[4] {
        TransformConfig::Mask(m) => assert_eq!(MaskMethod::parse(&m.with), Some(MaskMethod::Null)),
        other => panic!("{other:?}"),
    }
    match &cfg.transforms[2] {
        TransformConfig::Mask(m) => {
            assert_eq!(m.salt.as_deref(), Some("pepper"));
            assert_eq!(MaskMethod::parse(&m.with), Some(MaskMethod::Sha256));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cfg.transforms[3].tables(), ["*".to_string()]);
    assert!(cfg.transforms[5].applies_to("shop", "x"));
    assert_eq!(render_table_template("analytics.{table}", "shop", "x"), ("x".into(), Some("analytics".into())));
    assert_eq!(render_table_template("{table}_v2", "shop", "x"), ("x_v2".into(), None));

    let bad = format!(
        "{GOOD}transforms:
  - filter: {{where: \"\"}}
  - columns: {{include: [a], exclude: [b]}}
  - mask: {{columns: [a], with: blur}}
  - rename: {{to: \"{{db}}.x\"}}
  - ops: {{skip: [upsert]}}
  - frobnicate: {{}}
  - mask: {{columns: [a], with: sha256, colour: red}}
"
    );
    let e = parse_pipeline_text_with(&bad, "t.yaml", |_| Some("pw".into())).unwrap_err().to_string();
    assert!(e.contains("transforms[5]: unknown kind `frobnicate`"), "{e}");
    assert!(e.contains("transforms[6].mask") && e.contains("colour"), "{e}");
    let bad =
        bad.replace("  - frobnicate: {}\n", "").replace("  - mask: {columns: [a], with: sha256, colour: red}\n", "");
    let e = parse_pipeline_text_with(&bad, "t.yaml", |_| Some("pw".into())).unwrap_err().to_string();
    for want in [
        "transforms[0].filter.where",
        "transforms[1].columns: give include or exclude, not both",
        "transforms[2].mask.with: \"blur\"",
        "transforms[3].rename.to",
        "transforms[4].ops.skip: \"upsert\"",
    ] {
        assert!(e.contains(want), "{want} missing in {e}");
    }
}

#[test]
fn kafka_producer_settings_may_weaken_only_at_least_once() {
    let kafka = |delivery: &str, producer: &str| {
        let text = GOOD.replace(
            "  type: files\n  format: jsonl\n  path: ./out\n",
            &format!("  type: kafka\n  brokers: b:9092\n  delivery: {delivery}\n  producer:\n{producer}"),
        );
        parse_pipeline_text_with(&text, "k.yaml", |_| Some("pw".into())).map_err(|e| e.to_string())
    };
    let weak = "    acks: 1\n    enable.idempotence: false\n    retries: 0\n";
    for delivery in ["exactly_once", "transactional"] {
        let e = kafka(delivery, weak).unwrap_err();
        for key in ["acks", "enable.idempotence", "retries"] {
            assert!(e.contains(&format!("sink.producer.{key}:")), "{key} missing in {e}");
        }
        kafka(delivery, "    acks: all\n    max.in.flight.requests.per.connection: 5\n    linger.ms: 50\n").unwrap();
        kafka(delivery, "    acks: -1\n    enable.idempotence: true\n").unwrap();
    }
    kafka("at_least_once", weak).unwrap();
    assert!(kafka("at_least_once", "    bootstrap.servers: x\n").is_err());
}

#[test]
fn globs() {
    assert!(glob_match("shop.*", "shop.orders"));
    assert!(glob_match("shop.audit_*", "shop.audit_log"));
    assert!(!glob_match("shop.audit_*", "shop.orders"));
    assert!(glob_match("public.Odd Table", "public.Odd Table"));
    assert!(glob_match("*.t?", "a.tx"));
    assert!(!glob_match("*.t?", "a.txy"));
}

#[test]
fn parses_good_file() {
    let cfg =
        parse_pipeline_text_with(GOOD, "good.yaml", |k| (k == "SLUICE_TEST_PW").then(|| "secret".into())).unwrap();
    assert_eq!(cfg.slot_name(), "sluice_orders");
    assert_eq!(cfg.postgres().unwrap().url, "postgres://u:secret@localhost:5432/db");
    assert!(cfg.tables.matches("shop", "orders"));
    assert!(!cfg.tables.matches("shop", "audit_x"));
    assert!(cfg.tables.matches("public", "Odd Table"));
    assert_eq!(cfg.snapshot.parallelism, 4);
}

#[test]
fn reports_every_error_with_lines() {
    let text = "version: 2\nname: x\nsource:\n  type: postgres\n  url: postgres://h/db\n  slott: a\ntables:\n  include: []\nsink:\n  type: files\n  format: csv\n  path: o\nextra: 1\n";
    let e = parse_pipeline_text(text, "bad.yaml").unwrap_err();
    let all = e.errors.join("\n");
    assert!(all.contains("unknown key `extra` (line 13)"), "{all}");
    assert!(all.contains("slott") && all.contains("line 6"), "{all}");
    assert!(all.contains("csv"), "{all}");
    assert!(e.errors.len() >= 3);
}

#[test]
fn unset_variables_are_errors() {
    let e = substitute_env("a: ${NOPE_NOT_SET_X}\nb: ${ALSO_NOT_SET_Y}", |_| None).unwrap_err();
    assert_eq!(e.len(), 2);
    assert!(e[1].contains("line 2") && e[1].contains("ALSO_NOT_SET_Y"));
    assert_eq!(substitute_env("$${X} ${Y:-d}", |_| None).unwrap(), "${X} d");
}

/// What the YAML reader makes of syntax errors and of plain scalars that
/// YAML 1.1 would have turned into booleans or octal numbers.
#[test]
fn yaml_reading() {
    let errors = |text: &str| parse_pipeline_text_with(text, "f.yaml", |_| None).unwrap_err().errors;
    assert_eq!(errors("version: 1\nname: [unclosed\n"), ["YAML syntax: unclosed bracket '[' at line 2, column 7"]);
    assert_eq!(errors("version: 1\nversion: 2\n"), ["YAML syntax: duplicate mapping key: version at line 2, column 1"]);
    assert_eq!(
        errors("version: 1\nname: x\n\tsource: y\n")[0],
        "YAML syntax: while scanning a plain scalar, found a tab at line 2, column 7"
    );
    assert_eq!(errors(""), ["the file is empty"]);
    assert_eq!(errors("# nothing\n\n"), ["the file is empty"]);
    assert_eq!(errors("- a\n"), ["the top level must be a mapping of keys (version, name, source, ...)"]);
    let e = errors("version: yes\n");
    assert!(e.contains(&"version: invalid type: string \"yes\", expected u32".to_string()), "{e:?}");
    // Aliases are expanded; text that looks like YAML 1.1 booleans or
    // octal numbers stays text.
    let text = GOOD
        .replace("name: orders\n", "name: on\n")
        .replace("localhost:5432/db\n", "localhost:5432/db\n  slot: 0755\n");
    let pw = |_: &str| Some("pw".to_string());
    let cfg = parse_pipeline_text_with(&format!("x-url: &u postgres://h/db\n{text}"), "f.yaml", pw);
    assert!(cfg.as_ref().unwrap_err().errors[0].starts_with("unknown key `x-url` (line 1)"), "{cfg:?}");
    let cfg = parse_pipeline_text_with(&format!("{text}checkpoint:\n  path: *p\nx: &p /tmp/cp\n"), "f.yaml", pw);
    assert!(cfg.is_err(), "an alias before its anchor is an error: {cfg:?}");
    let cfg = parse_pipeline_text_with(&text, "f.yaml", pw).unwrap();
    assert_eq!(cfg.slot_name(), "0755");
    // Keys with nothing under them are empty, not errors.
    let text = GOOD.replace("  exclude: [\"shop.audit_*\"]\n", "  exclude:\n")
        + "snapshot:\ncheckpoint:\n  # path: ./state\ntransforms:\n  - rename:\n      to: \"x_{table}\"\n      columns:\n";
    let empty = parse_pipeline_text_with(&text, "f.yaml", pw).unwrap();
    assert!(empty.tables.exclude.is_empty() && empty.snapshot.parallelism == 4 && empty.checkpoint.path.is_none());
    assert_eq!(empty.transforms.len(), 1);
    // Unknown keys are reported in file order.
    let e = errors("zeta: 1\nalpha: 2\n");
    assert!(
        e[0].starts_with("unknown key `zeta` (line 1)") && e[1].starts_with("unknown key `alpha` (line 2)"),
        "{e:?}"
    );
    assert_eq!(cfg.name, "on");
}
