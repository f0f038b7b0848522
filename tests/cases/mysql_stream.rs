//! MySQL/MariaDB source: stream semantics (multi-table transactions,
//! rollbacks, key changes, tables without a key, DDL mid-stream, TRUNCATE),
//! SIGKILL at random points, server restarts, purged binlogs, preflight.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use rand::{Rng, SeedableRng};

use super::crash::check_versions;
use crate::harness::*;

fn acct_sql() -> &'static str {
    "SELECT JSON_OBJECT('id', id, 'v', v, 'n', CAST(n AS CHAR), 'ver', ver) FROM shop.acct"
}

fn hist_sql() -> &'static str {
    "SELECT JSON_OBJECT('id', id, 'acct', acct, 'note', note) FROM shop.hist"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_stream_semantics_and_ddl() {
    let env = MyEnv::new("mystream");
    env.sql(
        "CREATE DATABASE shop CHARACTER SET utf8mb4; CREATE DATABASE other; \
         CREATE TABLE shop.a (id INT PRIMARY KEY, v VARCHAR(20)); \
         CREATE TABLE shop.b (k1 INT, k2 VARCHAR(10), v INT, PRIMARY KEY (k1, k2)); \
         CREATE TABLE shop.nokey (x INT, y VARCHAR(10)); \
         CREATE TABLE shop.skipped (id INT PRIMARY KEY); \
         CREATE TABLE other.t (id INT PRIMARY KEY); \
         INSERT INTO shop.a VALUES (1, 'one'), (2, 'two'); INSERT INTO shop.nokey VALUES (1, 'x'), (1, 'x'), (2, 'y');",
    );
    let p = env.pipeline("mys", &["shop.*"], &env.files_sink("mys", "jsonl"), "");
    let p = {
        // Exclude one table by glob.
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("  include: [\"shop.*\"]", "  include: [\"shop.*\"]\n  exclude: [\"shop.skip*\"]");
        std::fs::write(&p, text).unwrap();
        p
    };
    catch_up(&p).await;
    env.sql(
        "START TRANSACTION; INSERT INTO shop.a VALUES (3, 'three'); INSERT INTO shop.b VALUES (1, 'x', 10), (1, 'y', 11); \
           UPDATE shop.a SET v = 'uno' WHERE id = 1; INSERT INTO other.t VALUES (1); INSERT INTO shop.skipped VALUES (1); COMMIT; \
         START TRANSACTION; INSERT INTO shop.a VALUES (99, 'rolled back'); DELETE FROM shop.a WHERE id = 2; ROLLBACK; \
         UPDATE shop.a SET id = 20 WHERE id = 2; \
         UPDATE shop.b SET k2 = 'z', v = 12 WHERE k1 = 1 AND k2 = 'y'; \
         DELETE FROM shop.nokey WHERE x = 1 LIMIT 1; UPDATE shop.nokey SET y = 'yy' WHERE x = 2; \
         START TRANSACTION; SAVEPOINT s1; INSERT INTO shop.a VALUES (50, 'sp'); ROLLBACK TO SAVEPOINT s1; INSERT INTO shop.a VALUES (51, 'kept'); COMMIT;",
    );
    // DDL mid-stream: the first run has not seen these rows yet.
    env.sql(
        "ALTER TABLE shop.a ADD COLUMN extra INT DEFAULT 7; \
         INSERT INTO shop.a (id, v, extra) VALUES (4, 'four', 8); \
         UPDATE shop.a SET extra = 9 WHERE id = 1; \
         ALTER TABLE shop.a MODIFY COLUMN v VARCHAR(100); \
         INSERT INTO shop.a VALUES (5, REPEAT('v', 90), NULL); \
         ALTER TABLE shop.b DROP COLUMN v; \
         INSERT INTO shop.b VALUES (2, 'q'); \
         CREATE TABLE shop.late (id INT PRIMARY KEY, s TEXT); INSERT INTO shop.late VALUES (1, 'new table');",
    );
    catch_up(&p).await;
    env.sql("TRUNCATE TABLE shop.nokey; INSERT INTO shop.nokey VALUES (3, 'after');");
    catch_up(&p).await;

    let out = read_jsonl(&env.out("mys"));
    assert!(!out.contains_key("shop.skipped"), "excluded table in the output");
    assert!(!out.contains_key("other.t"), "table outside the include globs in the output");
    assert!(out["shop.a"].iter().all(|e| e.after.as_ref().map(|a| a["id"] != 99 && a["id"] != 50).unwrap_or(true)));

    // Rows after the ADD COLUMN carry it; earlier images do not.
    let got = replay(&out["shop.a"], &["id"]).unwrap();
    let want = env.rows("SELECT JSON_OBJECT('id', id, 'v', v, 'extra', extra) FROM shop.a", &["id"]);
    let mut got_fixed = got.clone();
    for r in got_fixed.values_mut() {
        r.entry("extra").or_insert(serde_json::json!(7));
    }
    assert_same("shop.a", &got_fixed, &want);
    let four = out["shop.a"].iter().find(|e| e.after.as_ref().is_some_and(|a| a["id"] == 4)).unwrap();
    assert_eq!(four.after.as_ref().unwrap()["extra"], 8);

    let got = replay(&out["shop.b"], &["k1", "k2"]).unwrap();
    let want = env.rows("SELECT JSON_OBJECT('k1', k1, 'k2', k2) FROM shop.b", &["k1", "k2"]);
    let mut got_fixed = got.clone();
    for r in got_fixed.values_mut() {
        r.remove("v");
    }
    assert_same("shop.b", &got_fixed, &want);

    let got = replay(&out["shop.nokey"], &[]).unwrap();
    let want = env.rows("SELECT JSON_OBJECT('x', x, 'y', y) FROM shop.nokey", &[]);
    assert_same("shop.nokey", &got, &want);
    assert!(out["shop.nokey"].iter().any(|e| e.op == "t"), "TRUNCATE not delivered");

    let got = replay(&out["shop.late"], &["id"]).unwrap();
    let want = env.rows("SELECT JSON_OBJECT('id', id, 's', s) FROM shop.late", &["id"]);
    assert_same("shop.late", &got, &want);

    // One source transaction touching a and b: same GTID on all its events.
    let g3 = out["shop.a"].iter().find(|e| e.after.as_ref().is_some_and(|a| a["id"] == 3)).unwrap().raw["source"]
        ["gtid"]
        .clone();
    let gb = out["shop.b"].iter().find(|e| e.op == "c").unwrap().raw["source"]["gtid"].clone();
    assert_eq!(g3, gb);
}

/// Random transactions through mysql_async: inserts (a few large), updates
/// that bump `ver`, deletes, rollbacks.
/// A workload lasts about this long, whatever its number of rounds.
const PACE_MS: u64 = 8_000;

pub(crate) async fn workload(url: String, seed: u64, rounds: usize) {
    let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap()).await.unwrap();
    c.query_drop("USE shop").await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let first_id: i64 = 1_000_000 + (seed % 1000) as i64 * 10_000_000;
    let mut next_id = first_id;
    let pick = |rng: &mut rand::rngs::StdRng, next_id: i64| {
        if next_id > first_id && rng.gen_bool(0.5) {
            rng.gen_range(first_id..next_id)
        } else {
            rng.gen_range(1..20_000)
        }
    };
    for round in 0..rounds {
        let mut sql = String::from("START TRANSACTION;");
        let big = round % 25 == 10;
        let n = if big { 20_000 } else { rng.gen_range(1..60) };
        sql.push_str(&format!(
            "INSERT INTO shop.acct (id, v, n) SELECT seq, CONCAT('w', seq), seq % 1000 + 0.5 FROM seq_{}_to_{};",
            next_id,
            next_id + n - 1
        ));
        next_id += n;
        for _ in 0..rng.gen_range(0..5) {
            let id = pick(&mut rng, next_id);
            sql.push_str(&format!(
                "UPDATE shop.acct SET v = CONCAT(v, '+'), n = n + 1, ver = ver + 1 WHERE id = {id};"
            ));
        }
        if rng.gen_bool(0.5) {
            let id = pick(&mut rng, next_id);
            sql.push_str(&format!("DELETE FROM shop.acct WHERE id = {id};"));
        }
        sql.push_str(&format!("INSERT INTO shop.hist (acct, note) VALUES ({round}, 'round {round}');"));
        sql.push_str(if rng.gen_bool(0.1) { "ROLLBACK;" } else { "COMMIT;" });
        c.query_drop(sql).await.unwrap();
        // Paced over ~8 s, so a crash test's kills land while it runs.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=2 * PACE_MS / rounds as u64))).await;
    }
    let _ = c.disconnect().await;
}

pub(crate) const SETUP: &str = "CREATE DATABASE shop; USE shop; \
    CREATE TABLE shop.acct (id BIGINT PRIMARY KEY, v TEXT NOT NULL, n DECIMAL(12,2), ver INT NOT NULL DEFAULT 0); \
    CREATE TABLE shop.hist (id BIGINT AUTO_INCREMENT PRIMARY KEY, acct BIGINT, note TEXT); \
    INSERT INTO shop.acct (id, v, n) SELECT seq, CONCAT('v', seq), seq * 1.25 FROM seq_1_to_20000;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_sigkill_at_random_points_is_exactly_once() {
    let env = MyEnv::new("mycrash");
    env.sql(SETUP);
    let seed: u64 = std::env::var("SLUICE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("mysql crash test seed {seed} (set SLUICE_CRASH_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let roll = "  roll:\n    rows: 5000\n    seconds: 1\n";
    let pj = env.pipeline(
        "mcj",
        &["shop.*"],
        &format!("{}{roll}", env.files_sink("mcj", "jsonl")),
        "snapshot:\n  parallelism: 2\n",
    );
    let pp = env.pipeline(
        "mcp",
        &["shop.*"],
        &format!("{}{roll}", env.files_sink("mcp", "parquet")),
        "snapshot:\n  parallelism: 2\n",
    );
    let work = tokio::spawn(workload(env.url(), seed, 200));
    // The first kill lands early, inside the snapshot.
    let plan = KillPlan { first_ms: 100..500, later_ms: 300..2500, min: 8, max: 41 };
    let kills = kill_all_repeatedly(&[&pj, &pp], work, &mut rng, plan).await;
    for name in ["mcj", "mcp"] {
        let cp: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(env.dir.join(format!("state-{name}/checkpoint.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(cp["tables"]["shop.acct"]["snapshot"], "done", "{name}: snapshot never finished between kills");
        assert_eq!(cp["position"]["type"], "mysql", "{name}: no stream checkpoint between kills");
    }
    catch_up(&pj).await;
    catch_up(&pp).await;
    kills.assert_mid_work();

    let out = read_jsonl(&env.out("mcj"));
    check_versions(&out["shop.acct"]);
    assert_same("jsonl acct", &replay(&out["shop.acct"], &["id"]).unwrap(), &env.rows(acct_sql(), &["id"]));
    assert_same("jsonl hist", &replay(&out["shop.hist"], &["id"]).unwrap(), &env.rows(hist_sql(), &["id"]));

    let out = read_parquet(&env.out("mcp"));
    check_versions(&out["shop.acct"]);
    let want = env.rows(
        "SELECT JSON_OBJECT('id', CAST(id AS CHAR), 'v', v, 'n', CAST(n AS CHAR), 'ver', CAST(ver AS CHAR)) FROM shop.acct",
        &["id"],
    );
    assert_same("parquet acct", &replay(&out["shop.acct"], &["id"]).unwrap(), &want);
    let want = env.rows(
        "SELECT JSON_OBJECT('id', CAST(id AS CHAR), 'acct', CAST(acct AS CHAR), 'note', note) FROM shop.hist",
        &["id"],
    );
    assert_same("parquet hist", &replay(&out["shop.hist"], &["id"]).unwrap(), &want);
    for out in ["mcj", "mcp"] {
        for d in std::fs::read_dir(env.out(out)).unwrap().flatten() {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                assert!(!f.file_name().to_string_lossy().starts_with('.'), "hidden file left: {:?}", f.path());
            }
        }
    }
}

fn checkpoint_pos(path: &std::path::Path) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let file = v["position"]["file"].as_str()?;
    let seq: u64 = file.rsplit('.').next()?.parse().ok()?;
    Some((seq, v["position"]["pos"].as_u64()?))
}

fn master_pos(env: &MyEnv) -> (u64, u64) {
    let s = env.sql("SHOW MASTER STATUS");
    let mut it = s.split('\t');
    let file = it.next().unwrap();
    let pos: u64 = it.next().unwrap().trim().parse().unwrap();
    (file.rsplit('.').next().unwrap().parse().unwrap(), pos)
}

/// A server restart while the pipeline streams: it reconnects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_server_restart_mid_stream() {
    let mut env = MyEnv::new("myrestart");
    env.sql(SETUP);
    let p = env.pipeline("mrs", &["shop.*"], &env.files_sink("mrs", "jsonl"), "");
    let mut run = tokio::process::Command::new(SLUICE)
        .args(["run", p.to_str().unwrap()])
        .env("SLUICE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    workload(env.url(), 7, 40).await;
    env.my.restart(false).unwrap();
    workload(env.url(), 8, 40).await;
    let end = master_pos(&env);
    let cp_file = env.dir.join("state-mrs").join("checkpoint.json");
    wait_until(Duration::from_secs(120), Duration::from_millis(200), "pipeline resumes after the restart", || async {
        let pos = checkpoint_pos(&cp_file).unwrap_or((0, 0));
        if pos >= end {
            Ok(())
        } else {
            Err(format!("{pos:?} < {end:?}"))
        }
    })
    .await;
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(run.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(60), run.wait()).await.expect("graceful stop").unwrap();
    assert!(status.success(), "sluice run exited with {status:?} after SIGTERM");
    catch_up(&p).await;
    let out = read_jsonl(&env.out("mrs"));
    check_versions(&out["shop.acct"]);
    assert_same("acct", &replay(&out["shop.acct"], &["id"]).unwrap(), &env.rows(acct_sql(), &["id"]));
    assert_same("hist", &replay(&out["shop.hist"], &["id"]).unwrap(), &env.rows(hist_sql(), &["id"]));
}

/// A connection that goes silent (the server frozen: no event, not even a
/// heartbeat) is dropped after 11 s, and the run reconnects by itself from
/// the checkpoint: every change before and after arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_silent_connection_reconnects() {
    let env = MyEnv::new("mysilent");
    env.sql(SETUP);
    let p = env.pipeline("msl", &["shop.*"], &env.files_sink("msl", "jsonl"), "");
    let log = env.dir.join("msl.log");
    let mut run = tokio::process::Command::new(SLUICE)
        .args(["run", p.to_str().unwrap()])
        .env("SLUICE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let cp_file = env.dir.join("state-msl").join("checkpoint.json");
    let caught_up = |end: (u64, u64)| {
        let cp_file = cp_file.clone();
        async move {
            let pos = checkpoint_pos(&cp_file).unwrap_or((0, 0));
            if pos >= end {
                Ok(())
            } else {
                Err(format!("{pos:?} < {end:?}"))
            }
        }
    };
    workload(env.url(), 11, 20).await;
    let end = master_pos(&env);
    wait_until(Duration::from_secs(60), Duration::from_millis(200), "first changes delivered", || caught_up(end)).await;
    let frozen = tokio::task::block_in_place(|| env.my.freeze(Duration::from_secs(15)));
    frozen.unwrap();
    workload(env.url(), 12, 20).await;
    let end = master_pos(&env);
    wait_until(Duration::from_secs(120), Duration::from_millis(200), "changes after the silence delivered", || {
        caught_up(end)
    })
    .await;
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(run.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(60), run.wait()).await.expect("graceful stop").unwrap();
    assert!(status.success(), "sluice run exited with {status:?} after SIGTERM");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("no event or heartbeat from"), "the silence was not detected:\n{log}");
    assert!(log.contains("restarting from the checkpoint"), "no reconnect logged:\n{log}");
    // No catch-up run: the running pipeline delivered everything itself.
    let out = read_jsonl(&env.out("msl"));
    check_versions(&out["shop.acct"]);
    assert_same("acct", &replay(&out["shop.acct"], &["id"]).unwrap(), &env.rows(acct_sql(), &["id"]));
    assert_same("hist", &replay(&out["shop.hist"], &["id"]).unwrap(), &env.rows(hist_sql(), &["id"]));
}

/// Resuming after the binlog holding the checkpoint was purged fails with
/// the clear error, and a teardown + new run re-snapshots correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_purged_binlog_is_a_clear_error() {
    let env = MyEnv::new("mypurge");
    env.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY, v TEXT); INSERT INTO shop.t VALUES (1, 'a');",
    );
    let p = env.pipeline("mpg", &["shop.*"], &env.files_sink("mpg", "jsonl"), "");
    catch_up(&p).await;
    // Changes the pipeline has not seen, in a binlog that is then purged.
    env.sql(
        "INSERT INTO shop.t VALUES (2, 'b'); FLUSH BINARY LOGS; INSERT INTO shop.t VALUES (3, 'c'); FLUSH BINARY LOGS;",
    );
    let last = env.sql("SHOW MASTER STATUS");
    let last = last.split('\t').next().unwrap().to_string();
    // A dump thread of the finished run may hold the old binlog open for a
    // moment (until its next heartbeat fails): retry the purge.
    wait_until(Duration::from_secs(30), Duration::from_millis(300), "the server purges binlog.000001", || async {
        env.sql(&format!("PURGE BINARY LOGS TO '{last}'"));
        let logs = env.sql("SHOW BINARY LOGS");
        if logs.contains("binlog.000001") {
            Err(logs)
        } else {
            Ok(())
        }
    })
    .await;
    let r = sluice(&["run", p.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("no longer on the server") && r.stderr.contains("teardown"), "{}", r.stderr);
    let c = sluice(&["check", p.to_str().unwrap()]).await;
    assert!(c.stdout.contains("checkpoint"), "{}", c.stdout);
    // Nothing after the checkpoint was delivered.
    let out = read_jsonl(&env.out("mpg"));
    assert_eq!(out["shop.t"].len(), 1);
    let t = sluice(&["teardown", p.to_str().unwrap(), "--yes"]).await;
    assert_eq!(t.code, 0, "{}", t.stderr);
    let _ = std::fs::remove_dir_all(env.out("mpg"));
    catch_up(&p).await;
    let out = read_jsonl(&env.out("mpg"));
    assert_same(
        "t",
        &replay(&out["shop.t"], &["id"]).unwrap(),
        &env.rows("SELECT JSON_OBJECT('id', id, 'v', v) FROM shop.t", &["id"]),
    );
}

/// `sluice check` on a good and a misconfigured server; run refuses clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_check_and_bad_settings() {
    let env = MyEnv::new("mycheck");
    env.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.t (id INT PRIMARY KEY); CREATE TABLE shop.nk (x INT); \
         CREATE USER 'repl'@'%' IDENTIFIED BY 's3cret'; GRANT SELECT ON *.* TO 'repl'@'%';",
    );
    let p = env.pipeline("mck", &["shop.*"], &env.files_sink("mck", "jsonl"), "");
    let r = sluice(&["check", p.to_str().unwrap()]).await;
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    for want in ["binlog_format", "binlog_row_image", "binlog_row_metadata", "privileges", "server_id", "ready"] {
        assert!(r.stdout.contains(want), "check output lacks {want}:\n{}", r.stdout);
    }
    assert!(
        r.stdout.contains("WARN") && r.stdout.contains("shop.nk"),
        "no warning about the keyless table:\n{}",
        r.stdout
    );

    // status shows the checkpoint (none yet) and the server's binlog end.
    let r = sluice(&["status", p.to_str().unwrap(), "--json"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["source"]["reachable"], true, "{v}");
    assert!(v["source"]["binlog_file"].as_str().unwrap().starts_with("binlog."), "{v}");
    catch_up(&p).await;
    let r = sluice(&["status", p.to_str().unwrap(), "--json"]).await;
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["checkpoint"]["position"]["type"], "mysql", "{v}");
    assert_eq!(v["checkpoint"]["tables"]["shop.t"]["snapshot"], "done", "{v}");
    let r = sluice(&["status", p.to_str().unwrap()]).await;
    assert!(r.stdout.contains("checkpoint: binlog.") && r.stdout.contains("source: binlog at"), "{}", r.stdout);

    // Configuration errors: exit 2, naming the key.
    for (bad, key) in [
        ("  url: postgres://root@127.0.0.1:1/x\n", "source.url"),
        ("  server_id: 0\n", "source.server_id"),
        ("  slot: x\n", "slot"),
    ] {
        let text = std::fs::read_to_string(&p).unwrap();
        let text = if bad.contains("url") {
            text.replace(&format!("  url: {}\n", env.url()), bad)
        } else {
            text.replace("  type: mysql\n", &format!("  type: mysql\n{bad}"))
        };
        let pb = env.dir.join("bad.yaml");
        std::fs::write(&pb, text).unwrap();
        let r = sluice(&["check", pb.to_str().unwrap()]).await;
        assert_eq!(r.code, 2, "{bad}: {}\n{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(key), "{bad}: {}", r.stderr);
    }

    // A user without replication privileges.
    let text = std::fs::read_to_string(&p).unwrap().replace("mysql://root@", "mysql://repl:s3cret@");
    let pu = env.dir.join("user.yaml");
    std::fs::write(&pu, &text).unwrap();
    let r = sluice(&["check", pu.to_str().unwrap()]).await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("FAIL") && r.stdout.contains("REPLICATION SLAVE"), "{}", r.stdout);
    // Wrong password.
    let pw = env.dir.join("pw.yaml");
    std::fs::write(&pw, text.replace("s3cret", "wrong")).unwrap();
    let r = sluice(&["run", pw.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("cannot log in") && r.stderr.contains("password"), "{}", r.stderr);

    // Statement-based binlog and minimal metadata.
    env.sql("SET GLOBAL binlog_format = 'STATEMENT'; SET GLOBAL binlog_row_metadata = 'MINIMAL';");
    let r = sluice(&["check", p.to_str().unwrap()]).await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains("binlog_format = STATEMENT") && r.stdout.contains("SET GLOBAL binlog_format = 'ROW'"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("binlog_row_metadata = MINIMAL"), "{}", r.stdout);
    let r = sluice(&["run", p.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("binlog_format") && r.stderr.contains("ROW"), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);

    // Unreachable server.
    let text = std::fs::read_to_string(&p).unwrap().replace(&format!(":{}", env.my.port), ":1");
    let pd = env.dir.join("down.yaml");
    std::fs::write(&pd, text).unwrap();
    let r = sluice(&["run", pd.to_str().unwrap(), "--until-caught-up"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("cannot connect to MySQL"), "{}", r.stderr);
}
