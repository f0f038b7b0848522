//! SIGKILL at random points, the one way every crash test does it, with a
//! record of what each kill interrupted: a kill only tests recovery when
//! it lands while the pipeline is doing work that is not finished yet.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;

use super::spawn_run;

/// When to kill.
pub struct KillPlan {
    /// The first kill (usually early, inside the snapshot).
    pub first_ms: Range<u64>,
    /// Every later one.
    pub later_ms: Range<u64>,
    /// At least this many kills, even when the workload ends sooner.
    pub min: usize,
    /// At most this many.
    pub max: usize,
}

impl KillPlan {
    pub fn new(first_ms: Range<u64>) -> KillPlan {
        KillPlan { first_ms, later_ms: 300..2000, min: 5, max: 30 }
    }
}

/// What one pipeline's checkpoint said around one kill.
struct Round {
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
}

/// The kills of a crash test, per pipeline.
pub struct Kills {
    pipelines: Vec<PathBuf>,
    /// Per round: whether the workload was still running when it started,
    /// and each pipeline's checkpoint around the kill.
    rounds: Vec<(bool, Vec<Round>)>,
}

/// Start `pipeline` again and again while `work` runs, killing it at a
/// random point each time (see [`kill_all_repeatedly`]).
pub async fn kill_repeatedly(
    pipeline: &Path,
    work: tokio::task::JoinHandle<()>,
    rng: &mut rand::rngs::StdRng,
    first_ms: Range<u64>,
) -> Kills {
    kill_all_repeatedly(&[pipeline], work, rng, KillPlan::new(first_ms)).await
}

/// Start every pipeline and SIGKILL them one after the other (a random
/// 0–300 ms apart), again and again, until `work` has finished and at least
/// `plan.min` rounds ran. The first kill lands at a random point within
/// `plan.first_ms` (usually inside the snapshot); every later one only once
/// each run has moved its checkpoint on (or after 30 s), then at a random
/// point within the length of `plan.later_ms`: a kill before a run's first
/// checkpoint tests little.
pub async fn kill_all_repeatedly(
    pipelines: &[&Path],
    work: tokio::task::JoinHandle<()>,
    rng: &mut rand::rngs::StdRng,
    plan: KillPlan,
) -> Kills {
    let mut kills = Kills { pipelines: pipelines.iter().map(|p| p.to_path_buf()).collect(), rounds: Vec::new() };
    while !work.is_finished() || kills.rounds.len() < plan.min {
        let running = !work.is_finished();
        let before: Vec<_> = pipelines.iter().map(|p| progress(p)).collect();
        let mut runs: Vec<_> = pipelines.iter().map(|p| spawn_run(p)).collect();
        if kills.rounds.is_empty() {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(plan.first_ms.clone()))).await;
        } else {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < deadline && pipelines.iter().zip(&before).any(|(p, b)| progress(p) == *b)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let spread = plan.later_ms.end - plan.later_ms.start;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..spread))).await;
        }
        for (i, run) in runs.iter_mut().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
            }
            run.start_kill().unwrap();
        }
        for run in &mut runs {
            let _ = run.wait().await;
        }
        let after: Vec<_> = pipelines.iter().map(|p| progress(p)).collect();
        let pos = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v["position"].to_string()).unwrap_or_default();
        eprintln!(
            "kill {}: {}",
            kills.rounds.len() + 1,
            before.iter().zip(&after).map(|(b, a)| format!("{} -> {}", pos(b), pos(a))).collect::<Vec<_>>().join(", ")
        );
        let round = before.into_iter().zip(after).map(|(before, after)| Round { before, after }).collect();
        kills.rounds.push((running, round));
        if kills.rounds.len() >= plan.max {
            break;
        }
    }
    work.await.unwrap();
    eprintln!("killed each of {} pipeline(s) {} times", pipelines.len(), kills.rounds.len());
    kills
}

impl Kills {
    /// Call after the final catch-up: most kills that met work left landed
    /// mid-work. A kill is judged when its run started with work left (the
    /// checkpoint was not yet the final one; the first, early kill aside);
    /// it landed mid-work when the killed run had moved its checkpoint on
    /// and that was still not the final one. At least one must have, and at
    /// least half of the judged ones but one (`2 * mid + 1 >= judged`: the
    /// run that happened to finish the work misses by design). Kills that
    /// always land before the first change, or only after everything is
    /// done, fail this.
    pub fn assert_mid_work(&self) {
        for (i, p) in self.pipelines.iter().enumerate() {
            let last = progress(p);
            let judged: Vec<&Round> =
                self.rounds.iter().skip(1).map(|(_, r)| &r[i]).filter(|r| r.before != last).collect();
            let mid = judged.iter().filter(|r| r.before != r.after && r.after != last).count();
            let during = self.rounds.iter().filter(|(running, _)| *running).count();
            eprintln!(
                "{}: {mid} of {} kills with work left landed mid-work ({} kills in all, {during} while the workload ran)",
                p.display(),
                judged.len(),
                self.rounds.len()
            );
            assert!(
                mid >= 1 && 2 * mid + 1 >= judged.len(),
                "{}: only {mid} of {} kills with work left landed while the pipeline was working",
                p.display(),
                judged.len()
            );
        }
    }
}

/// The checkpoint directory of a pipeline file (`checkpoint: path:`).
pub fn checkpoint_file(pipeline: &Path) -> PathBuf {
    let text = std::fs::read_to_string(pipeline).unwrap();
    let mut in_checkpoint = false;
    for line in text.lines() {
        if line.starts_with("checkpoint:") {
            in_checkpoint = true;
        } else if in_checkpoint && line.trim_start().starts_with("path:") {
            return Path::new(line.trim_start().trim_start_matches("path:").trim()).join("checkpoint.json");
        } else if !line.starts_with(' ') {
            in_checkpoint = false;
        }
    }
    panic!("{}: no checkpoint.path", pipeline.display())
}

/// The checkpoint's position and per-table state (None before the first).
fn progress(pipeline: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(checkpoint_file(pipeline)).ok()?;
    let cp: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(serde_json::json!({ "position": cp["position"], "tables": cp["tables"] }))
}
