//! Crash tests: SIGKILL the pipeline at random moments (during the snapshot
//! and the stream, inside large transactions) while a workload runs, then
//! catch up and prove every committed change arrived exactly once.

use std::time::Duration;

use rand::{Rng, SeedableRng};

use crate::harness::*;

pub(crate) const SETUP: &str = "
CREATE TABLE acct (id bigint PRIMARY KEY, v text NOT NULL, n numeric(12,2), ver int NOT NULL DEFAULT 0);
CREATE TABLE hist (id bigserial PRIMARY KEY, acct bigint, note text);
INSERT INTO acct SELECT g, 'v' || g, g * 1.25 FROM generate_series(1, 40000) g;
";

/// Random transactions: inserts, updates, deletes, a few large ones.
/// A workload lasts about this long, whatever its number of rounds.
const PACE_MS: u64 = 8_000;

pub(crate) async fn workload(url: String, seed: u64, rounds: usize) {
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let first_id: i64 = 1_000_000 + seed as i64 % 1000 * 10_000_000;
    let mut next_id = first_id;
    // Updates and deletes hit rows that exist: from the initial load or
    // inserted by this workload (streamed rows too).
    let pick = |rng: &mut rand::rngs::StdRng, next_id: i64| {
        if next_id > first_id && rng.gen_bool(0.5) {
            rng.gen_range(first_id..next_id)
        } else {
            rng.gen_range(1..40_000)
        }
    };
    for round in 0..rounds {
        let mut sql = String::from("BEGIN;");
        let big = round % 25 == 10;
        let n = if big { 20_000 } else { rng.gen_range(1..60) };
        sql.push_str(&format!(
            "INSERT INTO acct SELECT g, 'w' || g, g % 1000 + 0.5 FROM generate_series({next_id}, {}) g;",
            next_id + n - 1
        ));
        next_id += n;
        for _ in 0..rng.gen_range(0..5) {
            let id = pick(&mut rng, next_id);
            sql.push_str(&format!("UPDATE acct SET v = v || '+', n = n + 1, ver = ver + 1 WHERE id = {id};"));
        }
        if rng.gen_bool(0.5) {
            let id = pick(&mut rng, next_id);
            sql.push_str(&format!("DELETE FROM acct WHERE id = {id};"));
        }
        sql.push_str(&format!("INSERT INTO hist (acct, note) VALUES ({round}, 'round {round}');"));
        if rng.gen_bool(0.1) {
            sql.push_str("ROLLBACK;");
        } else {
            sql.push_str("COMMIT;");
        }
        c.batch_execute(&sql).await.unwrap();
        // Paced over ~8 s, so a crash test's kills land while it runs.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..=2 * PACE_MS / rounds as u64))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_is_exactly_once() {
    // A tiny decoding memory makes the server stream the large transactions
    // (protocol 2), so kills also land while they are parked on disk.
    let env = Env::with_settings("crash", &[("logical_decoding_work_mem", "'64kB'")]);
    let c = env.client().await;
    c.batch_execute(SETUP).await.unwrap();
    let seed: u64 = std::env::var("SLUICE_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (set SLUICE_CRASH_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let roll = "  roll:\n    rows: 5000\n    seconds: 1\n";
    let pj = env.pipeline(
        "cj",
        &["public.*"],
        &format!("{}{roll}", env.files_sink("cj", "jsonl")),
        "snapshot:\n  parallelism: 2\n",
    );
    let pp = env.pipeline(
        "cp",
        &["public.*"],
        &format!("{}{roll}", env.files_sink("cp", "parquet")),
        "snapshot:\n  parallelism: 2\n",
    );

    let work = tokio::spawn(workload(env.url(), seed, 250));
    // The first kill lands early, inside the snapshot.
    let plan = KillPlan { first_ms: 150..700, later_ms: 300..2500, min: 8, max: 41 };
    let kills = kill_all_repeatedly(&[&pj, &pp], work, &mut rng, plan).await;
    // The kills must have hit the stream too, not only the snapshot.
    for name in ["cj", "cp"] {
        let cp: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(env.dir.join(format!("state-{name}/checkpoint.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(cp["tables"]["public.acct"]["snapshot"], "done", "{name}: snapshot never finished between kills");
        assert!(cp["position"]["lsn"].as_u64().is_some(), "{name}: no stream checkpoint between kills");
    }
    catch_up(&pj).await;
    catch_up(&pp).await;
    kills.assert_mid_work();

    let out = read_jsonl(&env.out("cj"));
    check_versions(&out["public.acct"]);
    let got = replay(&out["public.acct"], &["id"]).unwrap();
    let want =
        source_rows(&c, "SELECT json_build_object('id', id, 'v', v, 'n', n::text, 'ver', ver) FROM acct", &["id"])
            .await;
    assert_same("jsonl acct", &got, &want);
    let got = replay(&out["public.hist"], &["id"]).unwrap();
    let want =
        source_rows(&c, "SELECT json_build_object('id', id, 'acct', acct, 'note', note) FROM hist", &["id"]).await;
    assert_same("jsonl hist", &got, &want);

    let out = read_parquet(&env.out("cp"));
    check_versions(&out["public.acct"]);
    let got = replay(&out["public.acct"], &["id"]).unwrap();
    let want = source_rows(
        &c,
        "SELECT json_build_object('id', id::text, 'v', v, 'n', n::text, 'ver', ver::text) FROM acct",
        &["id"],
    )
    .await;
    assert_same("parquet acct", &got, &want);
    let got = replay(&out["public.hist"], &["id"]).unwrap();
    let want = source_rows(
        &c,
        "SELECT json_build_object('id', id::text, 'acct', acct::text, 'note', note) FROM hist",
        &["id"],
    )
    .await;
    assert_same("parquet hist", &got, &want);
    // No leftovers of interrupted files.
    for out in ["cj", "cp"] {
        for d in std::fs::read_dir(env.out(out)).unwrap().flatten() {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                assert!(!f.file_name().to_string_lossy().starts_with('.'), "hidden file left: {:?}", f.path());
            }
        }
    }
}

/// Every update must raise `ver` by exactly one over the row as delivered so
/// far: a duplicated or lost update event shows up here even when a later
/// update hides it in the final state.
pub(crate) fn check_versions(events: &[Event]) {
    let num = |v: &serde_json::Value| v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok()));
    // Ids as text, whether JSON numbers or (Parquet) strings.
    let id = |row: &serde_json::Map<String, serde_json::Value>| row["id"].to_string().trim_matches('"').to_string();
    let mut ver: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    for (i, e) in events.iter().enumerate() {
        match e.op.as_str() {
            "r" | "c" => {
                let a = e.after.as_ref().unwrap();
                ver.insert(id(a), num(&a["ver"]).unwrap());
            }
            "u" => {
                let a = e.after.as_ref().unwrap();
                let id = id(a);
                let new = num(&a["ver"]).unwrap();
                let old = ver.get(&id).copied().unwrap_or_else(|| panic!("event {i}: update of unknown id {id}"));
                assert_eq!(new, old + 1, "event {i}: id {id} went from ver {old} to {new} (duplicate or lost update)");
                ver.insert(id, new);
            }
            "d" => {
                ver.remove(&id(e.before.as_ref().unwrap()));
            }
            _ => {}
        }
    }
}

/// A server restart while the pipeline streams: it reconnects and resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_stream() {
    let env = Env::new("restart");
    let c = env.client().await;
    c.batch_execute("CREATE TABLE acct (id bigint PRIMARY KEY, v text NOT NULL, n numeric(12,2), ver int NOT NULL DEFAULT 0); CREATE TABLE hist (id bigserial PRIMARY KEY, acct bigint, note text); INSERT INTO acct SELECT g, 'v' || g, g FROM generate_series(1, 40000) g;")
        .await
        .unwrap();
    let p = env.pipeline("rs", &["public.*"], &env.files_sink("rs", "jsonl"), "");
    let mut run = tokio::process::Command::new(SLUICE)
        .args(["run", p.to_str().unwrap()])
        .env("SLUICE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    workload(env.url(), 7, 40).await;
    env.pg.restart("fast").unwrap();
    workload(env.url(), 8, 40).await;
    // The running pipeline must reconnect by itself and checkpoint past the
    // workload before it is stopped.
    let c = env.client().await;
    let end: String = c.query_one("SELECT pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    let end = sluice_core::event::parse_lsn(&end).unwrap();
    let cp_file = env.dir.join("state-rs").join("checkpoint.json");
    wait_until(Duration::from_secs(120), Duration::from_millis(200), "pipeline resumes after the restart", || async {
        let pos = std::fs::read_to_string(&cp_file)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["position"]["lsn"].as_u64())
            .unwrap_or(0);
        if pos >= end {
            Ok(())
        } else {
            Err(format!("checkpoint {pos}, end {end}"))
        }
    })
    .await;
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(run.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(60), run.wait()).await.expect("graceful stop").unwrap();
    assert!(status.success(), "sluice run exited with {status:?} after SIGTERM");
    catch_up(&p).await;
    let out = read_jsonl(&env.out("rs"));
    check_versions(&out["public.acct"]);
    let got = replay(&out["public.acct"], &["id"]).unwrap();
    let want =
        source_rows(&c, "SELECT json_build_object('id', id, 'v', v, 'n', n::text, 'ver', ver) FROM acct", &["id"])
            .await;
    assert_same("acct", &got, &want);
    let got = replay(&out["public.hist"], &["id"]).unwrap();
    let want =
        source_rows(&c, "SELECT json_build_object('id', id, 'acct', acct, 'note', note) FROM hist", &["id"]).await;
    assert_same("hist", &got, &want);
}
