//! MySQL/MariaDB text in every character set the server ships, through the
//! snapshot (the server converts) and through the binlog (Sluice decodes the
//! column's bytes), compared with what the server returns for the same rows.
//!
//! The legacy character sets are covered over their whole code space: every
//! single byte, every two-byte sequence with a lead byte 0x81..0xFE and
//! every 0x8F-prefixed three-byte sequence that the server itself can
//! convert goes into the table, grouped by lead byte. UTF-16/UTF-32/UCS-2
//! get every 7th BMP code point and supplementary characters.

use crate::harness::*;

/// The character sets of MariaDB 10.11 (gb18030 is MySQL 8 only: unit-tested).
const CHARSETS: &[&str] = &[
    "armscii8", "ascii", "big5", "cp1250", "cp1251", "cp1256", "cp1257", "cp850", "cp852", "cp866", "cp932", "dec8",
    "eucjpms", "euckr", "gb2312", "gbk", "geostd8", "greek", "hebrew", "hp8", "keybcs2", "koi8r", "koi8u", "latin1",
    "latin2", "latin5", "latin7", "macce", "macroman", "sjis", "swe7", "tis620", "ucs2", "ujis", "utf16", "utf16le",
    "utf32", "utf8mb3", "utf8mb4",
];

/// Unicode text for the UTF character sets: every 7th BMP code point (no
/// surrogates), in chunks, plus supplementary characters where they fit.
fn unicode_rows(bmp_only: bool) -> Vec<String> {
    let mut all: Vec<char> = (1u32..0xFFFE).step_by(7).filter_map(char::from_u32).collect();
    if !bmp_only {
        all.extend(['😀', '𠀀', '\u{10FFFD}', '🦀']);
    }
    all.chunks(800).map(|c| c.iter().collect()).collect()
}

fn sql_literal(s: &str) -> String {
    format!("_utf8mb4 0x{}", s.bytes().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Insert the test rows of every table with ids `base + ..`.
fn insert(env: &MyEnv, base: u32) {
    for cs in CHARSETS {
        let mut sql = String::from("SET SESSION group_concat_max_len = 16777216; ");
        let t = format!("shop.cs_{cs}");
        if cs.starts_with("utf") || *cs == "ucs2" {
            for (i, s) in unicode_rows(*cs == "ucs2" || *cs == "utf8mb3").iter().enumerate() {
                sql.push_str(&format!("INSERT INTO {t} (id, v) VALUES ({}, {});\n", base + i as u32, sql_literal(s)));
            }
        } else {
            // The candidates the server can convert, picked without strict
            // mode (which turns an unconvertible byte into an error instead
            // of '?'); the rows themselves are inserted in strict mode. One
            // row per lead byte (single bytes: per 32).
            sql.push_str(&format!(
                "SET SESSION sql_mode = ''; \
                 CREATE TEMPORARY TABLE shop.ok AS SELECT b FROM shop.cand \
                   WHERE LENGTH(b) <= (SELECT MAXLEN FROM information_schema.CHARACTER_SETS \
                                       WHERE CHARACTER_SET_NAME = '{cs}') \
                     AND LOCATE('?', CONVERT(CONVERT(b USING {cs}) USING utf8mb4)) = 0; \
                 SET SESSION sql_mode = DEFAULT; \
                 INSERT INTO {t} (id, v) SELECT {base} + grp, CONVERT(GROUP_CONCAT(b ORDER BY b SEPARATOR '') USING {cs}) \
                 FROM (SELECT b, IF(LENGTH(b) = 1, ASCII(b) DIV 32, ASCII(b) * 4 + LENGTH(b)) AS grp FROM shop.ok) x GROUP BY grp;\n"
            ));
        }
        sql.push_str(&format!("UPDATE {t} SET c = LEFT(v, 10), f = CONCAT(LEFT(v, 2), ' ') WHERE id >= {base};\n"));
        env.sql(&sql);
    }
}

fn server_rows(
    env: &MyEnv,
    cs: &str,
) -> std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>> {
    env.rows(&format!("SELECT JSON_OBJECT('id', id, 'v', CONVERT(v USING utf8mb4), 'c', CONVERT(c USING utf8mb4), 'f', CONVERT(f USING utf8mb4)) \
         FROM shop.cs_{cs}"), &["id"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_character_set_through_snapshot_and_stream() {
    let env = MyEnv::new("mycs");
    let mut setup = String::from(
        "CREATE DATABASE shop CHARACTER SET utf8mb4; \
         CREATE TABLE shop.cand (b VARBINARY(4) PRIMARY KEY); \
         INSERT INTO shop.cand SELECT UNHEX(LPAD(HEX(seq), 2, '0')) FROM mysql.seq_0_to_255 WHERE seq <> 63; \
         INSERT INTO shop.cand SELECT CONCAT(UNHEX(HEX(a.seq)), UNHEX(HEX(b.seq))) \
           FROM mysql.seq_129_to_254 a, mysql.seq_64_to_254 b; \
         INSERT INTO shop.cand SELECT CONCAT(0x8F, UNHEX(HEX(a.seq)), UNHEX(HEX(b.seq))) \
           FROM mysql.seq_161_to_254 a, mysql.seq_161_to_254 b;",
    );
    for cs in CHARSETS {
        setup.push_str(&format!(
            "CREATE TABLE shop.cs_{cs} (id INT PRIMARY KEY, v MEDIUMTEXT CHARACTER SET {cs}, \
             c VARCHAR(40) CHARACTER SET {cs}, f CHAR(4) CHARACTER SET {cs});"
        ));
    }
    env.sql(&setup);
    insert(&env, 0);
    let include: Vec<String> = CHARSETS.iter().map(|cs| format!("shop.cs_{cs}")).collect();
    let include: Vec<&str> = include.iter().map(String::as_str).collect();
    let p = env.pipeline("mycs", &include, &env.files_sink("mycs", "jsonl"), "");
    let run = catch_up(&p).await;
    assert_eq!(run.code, 0, "{}", run.stderr);

    // The same rows through the binlog; then an update (before images) and a delete.
    insert(&env, 10_000);
    let mut sql = String::new();
    for cs in CHARSETS {
        sql.push_str(&format!(
            "UPDATE shop.cs_{cs} SET c = REVERSE(c), v = CONCAT(v, LEFT(v, 3)) WHERE id % 2 = 0; \
             DELETE FROM shop.cs_{cs} WHERE id % 5 = 1;"
        ));
    }
    env.sql(&sql);
    let run = catch_up(&p).await;
    assert_eq!(run.code, 0, "{}", run.stderr);

    let out = read_jsonl(&env.out("mycs"));
    for cs in CHARSETS {
        let evs = &out[&format!("shop.cs_{cs}")];
        let snap = evs.iter().filter(|e| e.op == "r").count();
        let streamed = evs.iter().filter(|e| e.op == "c").count();
        assert!(snap > 0 && streamed == snap, "{cs}: {snap} snapshot rows, {streamed} streamed inserts");
        assert!(evs.iter().any(|e| e.op == "u") && evs.iter().any(|e| e.op == "d"), "{cs}: no updates or deletes");
        let want = server_rows(&env, cs);
        let chars: usize = want.values().map(|r| r["v"].as_str().unwrap_or("").chars().count()).sum();
        assert!(chars > 60, "{cs}: only {chars} characters tested");
        assert_same(&format!("shop.cs_{cs}"), &replay(evs, &["id"]).unwrap(), &want);
    }
}

/// Bytes the server stored but cannot convert (it accepts any well-formed
/// sequence, assigned or not): the table stops with an error naming the
/// column and character set, the other tables go on, a rerun keeps it
/// stopped, and a re-copy brings it back. Never a replaced character.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_bytes_stop_only_their_table() {
    let env = MyEnv::new("mybad");
    env.sql(
        "CREATE DATABASE shop CHARACTER SET utf8mb4; \
         CREATE TABLE shop.good (id INT PRIMARY KEY, v VARCHAR(20)); \
         CREATE TABLE shop.bad (id INT PRIMARY KEY, v VARCHAR(20) CHARACTER SET sjis); \
         INSERT INTO shop.good VALUES (1, 'a'); INSERT INTO shop.bad VALUES (1, _utf8mb4 'こん');",
    );
    let p = env.pipeline("mybad", &["shop.good", "shop.bad"], &env.files_sink("mybad", "jsonl"), "");
    let run = catch_up(&p).await;
    assert_eq!(run.code, 0, "{}", run.stderr);

    // 0x8540: a well-formed Shift-JIS sequence with no character assigned.
    env.sql(
        "BEGIN; INSERT INTO shop.bad VALUES (2, _utf8mb4 'ok'); INSERT INTO shop.good VALUES (2, 'b'); \
         INSERT INTO shop.bad VALUES (3, _binary 0x41854042); COMMIT; \
         INSERT INTO shop.bad VALUES (4, 'later'); INSERT INTO shop.good VALUES (3, 'c');",
    );
    let run = sluice(&["run", p.to_str().unwrap(), "--until-caught-up"]).await;
    assert_bad_sjis_stopped(&run);
    let out = read_jsonl(&env.out("mybad"));
    let good = env.rows("SELECT JSON_OBJECT('id', id, 'v', v) FROM shop.good", &["id"]);
    assert_same("shop.good", &replay(&out["shop.good"], &["id"]).unwrap(), &good);
    let bad: Vec<_> = out["shop.bad"].iter().filter(|e| e.op != "r").collect();
    assert!(bad.iter().all(|e| e.after.as_ref().unwrap()["id"] == 2), "changes of the stopped table: {bad:?}");
    assert!(!out.values().flatten().any(|e| format!("{:?}", e.after).contains('\u{fffd}')));

    // Still stopped on the next run (the checkpoint records it); the other table goes on.
    env.sql("INSERT INTO shop.good VALUES (4, 'd'); INSERT INTO shop.bad VALUES (5, 'x');");
    let run = sluice(&["run", p.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("table shop.bad is stopped"), "{}", run.stderr);
    let out = read_jsonl(&env.out("mybad"));
    let good = env.rows("SELECT JSON_OBJECT('id', id, 'v', v) FROM shop.good", &["id"]);
    assert_same("shop.good", &replay(&out["shop.good"], &["id"]).unwrap(), &good);
    assert!(!out["shop.bad"].iter().any(|e| e.after.as_ref().is_some_and(|a| a["id"] == 5)));

    // Fixed at the source and re-copied: dropped from the include list for one run, added back.
    env.sql("UPDATE shop.bad SET v = 'fixed' WHERE id = 3;");
    let only_good = env.pipeline("mybad", &["shop.good"], &env.files_sink("mybad", "jsonl"), "");
    assert_eq!(catch_up(&only_good).await.code, 0);
    let p = env.pipeline("mybad", &["shop.good", "shop.bad"], &env.files_sink("mybad", "jsonl"), "");
    let run = catch_up(&p).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    env.sql("INSERT INTO shop.bad VALUES (6, 'after');");
    let run = catch_up(&p).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = read_jsonl(&env.out("mybad"));
    let want = env.rows("SELECT JSON_OBJECT('id', id, 'v', CONVERT(v USING utf8mb4)) FROM shop.bad", &["id"]);
    let last_copy = out["shop.bad"].iter().rposition(|e| e.op == "r" && e.after.as_ref().unwrap()["id"] == 1).unwrap();
    let recopied: Vec<_> = out["shop.bad"][last_copy..].to_vec();
    assert_same("shop.bad", &replay(&recopied, &["id"]).unwrap(), &want);
}

/// Bytes stored before the first copy that the server cannot convert either
/// (it would read them as `?`): the snapshot decodes text itself, stops
/// the table, publishes none of its rows; fixed at the source, the next run
/// copies it again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_bytes_in_the_snapshot_stop_their_table() {
    let env = MyEnv::new("mybadsnap");
    env.sql(
        "CREATE DATABASE shop CHARACTER SET utf8mb4; \
         CREATE TABLE shop.good (id INT PRIMARY KEY, v VARCHAR(20) CHARACTER SET cp1251); \
         CREATE TABLE shop.bad (id INT PRIMARY KEY, v TEXT CHARACTER SET sjis); \
         INSERT INTO shop.good VALUES (1, _utf8mb4 'Привет'); \
         INSERT INTO shop.bad VALUES (1, _utf8mb4 'こん'), (2, _binary 0x41854042);",
    );
    // What a server-side conversion makes of it: a replacement, silently.
    assert_eq!(env.sql("SELECT CONVERT(v USING utf8mb4) FROM shop.bad WHERE id = 2").trim(), "A?B");
    let p = env.pipeline("mybadsnap", &["shop.*"], &env.files_sink("mybadsnap", "jsonl"), "");
    let run = sluice(&["run", p.to_str().unwrap(), "--until-caught-up"]).await;
    assert_bad_sjis_stopped(&run);
    let out = read_jsonl(&env.out("mybadsnap"));
    let good = env.rows("SELECT JSON_OBJECT('id', id, 'v', CONVERT(v USING utf8mb4)) FROM shop.good", &["id"]);
    assert_same("shop.good", &replay(&out["shop.good"], &["id"]).unwrap(), &good);
    assert!(out.get("shop.bad").is_none_or(|e| e.is_empty()), "rows of the stopped copy were published");

    env.sql("UPDATE shop.bad SET v = _utf8mb4 'fixed' WHERE id = 2; INSERT INTO shop.bad VALUES (3, _utf8mb4 'ソ');");
    let run = catch_up(&p).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = read_jsonl(&env.out("mybadsnap"));
    let want = env.rows("SELECT JSON_OBJECT('id', id, 'v', CONVERT(v USING utf8mb4)) FROM shop.bad", &["id"]);
    assert_same("shop.bad", &replay(&out["shop.bad"], &["id"]).unwrap(), &want);
}

/// The run failed and said that `shop.bad` stopped on column `v`'s Shift-JIS bytes.
fn assert_bad_sjis_stopped(run: &Run) {
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("table shop.bad is stopped")
            && run.stderr.contains("column v")
            && run.stderr.contains("not valid sjis text"),
        "{}",
        run.stderr
    );
}
