//! `sluice check`: the configuration, then the source's, the sink's and the
//! transform stage's findings against the live servers.

use std::path::Path;

use sluice_core::config::{PipelineConfig, SourceConfig};
use sluice_core::error::SourceError;
use sluice_core::preflight::{Report, Status as CheckStatus};
use sluice_core::TableId;

use crate::sources;
use crate::{load, Failure};

pub(crate) async fn cmd_check(path: &Path) -> Result<u8, Failure> {
    let cfg = load(path)?;
    println!("pipeline {} ({}): configuration is valid", cfg.name, path.display());
    let mut report = sources::preflight(&cfg).await;
    crate::sinks::preflight(&cfg.sink, &mut report).await;
    let bad_transforms = !cfg.transforms.is_empty() && !transform_findings(&cfg, &mut report).await;
    for f in &report.findings {
        let tag = match f.status {
            CheckStatus::Ok => "ok  ",
            CheckStatus::Warn => "WARN",
            CheckStatus::Fail => "FAIL",
        };
        println!("  {tag}  {:<24} {}", f.check, f.message);
    }
    if bad_transforms {
        println!("invalid transforms: fix the FAIL items above");
        Ok(2)
    } else if report.failed() {
        println!("not ready: fix the FAIL items above");
        Ok(1)
    } else {
        println!("ready");
        Ok(0)
    }
}

/// `sluice check` findings of the transform stage: every filter, column and
/// mask against the tables, and filters whose update semantics depend on
/// old values the source does not send.
/// Returns false when a transform cannot apply to the tables (a
/// configuration error).
async fn transform_findings(cfg: &PipelineConfig, report: &mut Report) -> bool {
    let Ok(mut chain) = sluice_transforms::Chain::new(&cfg.transforms) else { return false };
    let tables = match sources::table_schemas(cfg).await {
        Ok(t) => t,
        Err(e) => {
            // The source checks above say why.
            report.push(CheckStatus::Fail, "transforms", format!("cannot read the tables' columns: {e}"));
            return true;
        }
    };
    let errors = chain.check_tables(&tables);
    for e in &errors {
        report.push(CheckStatus::Fail, "transforms", e.clone());
    }
    let mysql = matches!(cfg.source, SourceConfig::Mysql(_));
    for w in chain.warnings(&tables, mysql) {
        report.push(CheckStatus::Warn, "filter semantics", w);
    }
    if errors.is_empty() {
        report.push(
            CheckStatus::Ok,
            "transforms",
            format!("{} step(s) apply to {} table(s)", cfg.transforms.len(), tables.len()),
        );
        if let SourceConfig::Postgres(_) = &cfg.source {
            match pushdown_findings(cfg).await {
                Ok(lines) => {
                    for l in lines {
                        report.push(CheckStatus::Ok, "pushdown", l);
                    }
                }
                Err(e) => report.push(CheckStatus::Warn, "pushdown", format!("cannot plan the pushdown: {e}")),
            }
        }
    }
    errors.is_empty()
}

/// What the publication will do for the transforms, table by table.
async fn pushdown_findings(cfg: &PipelineConfig) -> Result<Vec<String>, SourceError> {
    let pg = sluice_source_postgres::pg_config(cfg)?;
    let info = sluice_source_postgres::conn_info(pg)?;
    let client = sluice_client_postgres::connect_sql(&info).await?;
    let tables = sluice_source_postgres::included_tables(&client, &cfg.tables).await?;
    let domains = sluice_source_postgres::domains(&client).await?;
    let plain: Vec<TableId> = tables.iter().filter(|t| !t.partitioned).map(|t| t.id.clone()).collect();
    let planned = sluice_source_postgres::plan_pushdown(
        &client,
        cfg,
        sluice_transforms::pushdown::PostgresPlanner::for_transforms(&cfg.transforms).as_deref(),
        &info.dbname,
        &plain,
        &domains,
    )
    .await?;
    if planned.is_empty() {
        return Ok(vec![if pg.pushdown == Some(false) {
            "off (source.pushdown: false): every step runs in Sluice".to_string()
        } else {
            "nothing can be pushed down (Postgres 15+ and filters on replica-identity columns or include lists are needed); every step runs in Sluice".to_string()
        }]);
    }
    let mut out: Vec<String> = planned
        .iter()
        .map(|(t, p)| {
            let mut parts = Vec::new();
            if let Some(c) = &p.columns {
                parts.push(format!("columns ({})", c.join(", ")));
            }
            if let Some(f) = &p.row_filter {
                parts.push(format!("WHERE {f}"));
            }
            format!("{t}: {} in the publication (Sluice still applies every step)", parts.join(" and "))
        })
        .collect();
    out.sort();
    Ok(out)
}
