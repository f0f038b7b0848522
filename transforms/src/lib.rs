//! The filter and transform stage: row filters, column subsets, masking,
//! renames and op skipping, between source and sink.
//!
//! ```text
//!  transforms: [..] ──compile──▶ Chain ──per source table version──▶ Plan
//!                                                                     │
//!  ChangeEvent (source schema) ──▶ filter / project / mask / skip ────┴─▶ ChangeEvent (plan's output schema)
//! ```
//!
//! Invariants:
//! - Steps apply in the order of the pipeline file. Every step's `tables:`
//!   globs are matched against the *source* table name (`schema.table`),
//!   like `tables.include`, whatever earlier renames did.
//! - A step's column names refer to the columns as the earlier steps left
//!   them (after a column rename, the new name).
//! - One source schema version gives one [`Plan`] and one output schema
//!   `Arc`; every event of that version carries it.
//! - No I/O and no waiting; each event becomes zero or one event.
//! - Masks apply to `before` and `after` images and to snapshot rows alike;
//!   values the source did not send ([`Value::Unchanged`]) stay unsent.
//! - Filters keep a replica equal to "source rows matching the filter": an
//!   UPDATE moving a row in becomes `c`, moving it out becomes `d`. When the
//!   old row is incomplete (REPLICA IDENTITY DEFAULT, old values of non-key
//!   columns unknown) see [`filter`] for what is sent.

pub mod expr;
pub mod filter;
pub mod mask;
pub mod pushdown;
pub mod text;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use sluice_core::config::{parse_op_name, render_table_template, MaskMethod, PipelineConfig, TransformConfig};
use sluice_core::transform::{Transform, TransformError};
use sluice_core::{ChangeEvent, Op, TableId, TableSchema};

pub use expr::Tri;

/// A step compiled from the configuration, not yet bound to a table.
#[derive(Debug, Clone)]
enum Step {
    Filter(Box<expr::Parsed>),
    Columns { include: Option<Vec<String>>, exclude: Option<Vec<String>> },
    Mask { columns: Vec<String>, method: MaskMethod, salt: Option<String> },
    Rename { to: Option<String>, columns: BTreeMap<String, String> },
    Ops { skip: [bool; 5] },
}

#[derive(Debug, Clone)]
struct StepDef {
    index: usize,
    globs: Vec<String>,
    step: Step,
}

impl StepDef {
    fn applies(&self, id: &TableId) -> bool {
        let full = format!("{}.{}", id.schema, id.name);
        self.globs.iter().any(|g| sluice_core::config::glob_match(g, &full))
    }
    fn at(&self) -> String {
        let kind = match self.step {
            Step::Filter(_) => "filter",
            Step::Columns { .. } => "columns",
            Step::Mask { .. } => "mask",
            Step::Rename { .. } => "rename",
            Step::Ops { .. } => "ops",
        };
        format!("transforms[{}].{kind}", self.index)
    }
}

/// What a plan does to rows, in order.
#[derive(Debug, Clone)]
enum RowOp {
    Filter(filter::RowFilter),
    /// Keep these column indices (of the layout before this op).
    Project(Vec<usize>),
    Mask(mask::RowMask),
    Skip([bool; 5]),
}

/// The compiled transforms of one source schema version.
#[derive(Debug)]
pub struct Plan {
    pub source: Arc<TableSchema>,
    pub output: Arc<TableSchema>,
    ops: Vec<RowOp>,
    /// Nothing to do but (maybe) swap the schema.
    rows_untouched: bool,
    /// A filter sends updates as upserts (`c`): they need whole new rows.
    updates_become_rows: bool,
    /// Filters compiled against the *source* layout (for pushdown), with the
    /// steps before them that keep that layout.
    pub source_filters: Vec<expr::Compiled>,
    /// Source columns a pushed-down column list may leave out (only from
    /// `include` lists before any mask or column rename).
    pub dropped_source_columns: Vec<String>,
    /// True when every filter of this table is among `source_filters`.
    pub filters_all_on_source: bool,
}

fn op_index(op: Op) -> usize {
    match op {
        Op::Read => 0,
        Op::Create => 1,
        Op::Update => 2,
        Op::Delete => 3,
        Op::Truncate => 4,
    }
}

/// All transforms of a pipeline.
pub struct Chain {
    steps: Vec<StepDef>,
    plans: HashMap<TableId, Arc<Plan>>,
    last: Option<Arc<Plan>>,
    /// Output table → source table, to refuse two tables renamed into one.
    outputs: HashMap<TableId, TableId>,
    /// Evaluation errors already logged (per table and filter).
    warned: HashSet<(TableId, String)>,
}

/// Check the `where:` expressions of `cfg` (syntax only; columns and types
/// are checked against the tables at start). Every error, with its step.
pub fn validate(cfg: &PipelineConfig) -> Vec<String> {
    match Chain::new(&cfg.transforms) {
        Ok(_) => Vec::new(),
        Err(e) => e,
    }
}

impl Chain {
    pub fn new(cfg: &[TransformConfig]) -> Result<Chain, Vec<String>> {
        let mut errs = Vec::new();
        let mut steps = Vec::new();
        for (index, t) in cfg.iter().enumerate() {
            let step = match t {
                TransformConfig::Filter(f) => match expr::parse(&f.condition) {
                    Ok(p) => Step::Filter(Box::new(p)),
                    Err(e) => {
                        errs.push(format!("transforms[{index}].filter.where: {:?}: {e}", f.condition));
                        continue;
                    }
                },
                TransformConfig::Columns(c) => Step::Columns { include: c.include.clone(), exclude: c.exclude.clone() },
                TransformConfig::Mask(m) => match MaskMethod::parse(&m.with) {
                    Some(method) => Step::Mask { columns: m.columns.clone(), method, salt: m.salt.clone() },
                    None => {
                        errs.push(format!("transforms[{index}].mask.with: {:?} is not a mask", m.with));
                        continue;
                    }
                },
                TransformConfig::Rename(r) => Step::Rename { to: r.to.clone(), columns: r.columns.clone() },
                TransformConfig::Ops(o) => {
                    let mut skip = [false; 5];
                    for s in &o.skip {
                        if let Some(op) = parse_op_name(s) {
                            skip[op_index(op)] = true;
                        }
                    }
                    Step::Ops { skip }
                }
            };
            steps.push(StepDef { index, globs: t.tables().to_vec(), step });
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Chain { steps, plans: HashMap::new(), last: None, outputs: HashMap::new(), warned: HashSet::new() })
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// A new version of a table lost a column a mask or an exclude list
    /// names and gained one it does not name: most likely a rename at the
    /// source, whose values would pass unmasked. Stop until the pipeline
    /// file names the new column too.
    fn check_vanished(&self, old: &Arc<TableSchema>, new: &Arc<TableSchema>) -> Result<(), TransformError> {
        for s in self.steps.iter().filter(|s| s.applies(&new.id)) {
            let names: &[String] = match &s.step {
                Step::Mask { columns, .. } => columns,
                Step::Columns { exclude: Some(l), .. } => l,
                _ => continue,
            };
            let before = intermediate_columns(&self.steps, old, s.index).unwrap_or_default();
            let after = intermediate_columns(&self.steps, new, s.index).unwrap_or_default();
            // A dropped column leaks nothing; a renamed one shows up as a
            // new column the step does not name.
            let unnamed_new = after.iter().any(|c| !before.contains(c) && !names.contains(c));
            for n in names {
                if unnamed_new && before.contains(n) && !after.contains(n) {
                    return Err(TransformError::new(format!(
                        "column {n} of table {} is gone while a column {} does not name appeared (a rename at the source?): its data would no longer be {}; name the new column in the pipeline file too and start again",
                        new.id,
                        s.at(),
                        if matches!(s.step, Step::Mask { .. }) { "masked" } else { "excluded" }
                    )));
                }
            }
        }
        Ok(())
    }

    /// The plan for a source schema (cached per table and version).
    pub fn plan(&mut self, schema: &Arc<TableSchema>) -> Result<Arc<Plan>, TransformError> {
        if let Some(p) = &self.last {
            if Arc::ptr_eq(&p.source, schema) {
                return Ok(p.clone());
            }
        }
        if let Some(p) = self.plans.get(&schema.id) {
            if Arc::ptr_eq(&p.source, schema) || (p.source.version == schema.version && *p.source == **schema) {
                let p = p.clone();
                self.last = Some(p.clone());
                return Ok(p);
            }
        }
        if let Some(old) = self.plans.get(&schema.id) {
            self.check_vanished(&old.source.clone(), schema)?;
        }
        let plan = Arc::new(build_plan(&self.steps, schema).map_err(TransformError::new)?);
        if let Some(other) = self.outputs.get(&plan.output.id) {
            if *other != schema.id {
                return Err(TransformError::new(format!(
                    "tables {other} and {} are both renamed to {}; give them different names",
                    schema.id, plan.output.id
                )));
            }
        }
        self.outputs.insert(plan.output.id.clone(), schema.id.clone());
        // Keep the output Arc stable when an equal schema comes again (a
        // source restart re-announces tables): sinks compare by pointer.
        let plan = match self.plans.get(&schema.id) {
            Some(old) if old.output == plan.output => Arc::new(Plan {
                source: plan.source.clone(),
                output: old.output.clone(),
                ops: plan.ops.clone(),
                rows_untouched: plan.rows_untouched,
                updates_become_rows: plan.updates_become_rows,
                source_filters: plan.source_filters.clone(),
                dropped_source_columns: plan.dropped_source_columns.clone(),
                filters_all_on_source: plan.filters_all_on_source,
            }),
            _ => plan,
        };
        self.plans.insert(schema.id.clone(), plan.clone());
        self.last = Some(plan.clone());
        Ok(plan)
    }

    /// Plan every table at start: every problem at once, plus the names a
    /// step lists that none of its tables has (a typo would leak the column
    /// a mask or exclude meant to hide).
    pub fn check_tables(&mut self, tables: &[Arc<TableSchema>]) -> Vec<String> {
        let mut errs = Vec::new();
        for t in tables {
            if let Err(e) = self.plan(t) {
                errs.push(e.message);
            }
        }
        for s in &self.steps {
            // A step for no table is a typo (a filter or mask that silently
            // did nothing would let through what it was meant to hold back).
            let mine: Vec<&Arc<TableSchema>> = tables.iter().filter(|t| s.applies(&t.id)).collect();
            if mine.is_empty() {
                errs.push(format!("{}.tables: {:?} matches none of the included tables", s.at(), s.globs));
                continue;
            }
            let names: Vec<&String> = match &s.step {
                Step::Columns { include: Some(l), .. } | Step::Columns { exclude: Some(l), .. } => l.iter().collect(),
                Step::Mask { columns, .. } => columns.iter().collect(),
                Step::Rename { columns, .. } => columns.keys().collect(),
                _ => continue,
            };
            for n in names {
                let known = mine.iter().any(|t| {
                    intermediate_columns(&self.steps, t, s.index).is_some_and(|cols| cols.iter().any(|c| c == n))
                });
                if !known {
                    errs.push(format!(
                        "{}: no table it applies to has a column {n:?} (tables: {})",
                        s.at(),
                        mine.iter().map(|t| t.id.to_string()).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
        errs
    }

    /// Findings for `sluice check`: filters whose update semantics depend on
    /// old values the source does not send.
    /// `old_rows_complete`: the source always sends whole old rows (MySQL
    /// with `binlog_row_image=FULL`, which Sluice requires).
    pub fn warnings(&mut self, tables: &[Arc<TableSchema>], old_rows_complete: bool) -> Vec<String> {
        let mut out = Vec::new();
        if old_rows_complete {
            return out;
        }
        for t in tables {
            let Ok(plan) = self.plan(t) else { continue };
            for op in &plan.ops {
                if let RowOp::Filter(f) = op {
                    if let Some(w) = f.identity_warning(t) {
                        out.push(w);
                    }
                }
            }
        }
        out
    }
}

/// The column names as the steps before `upto` leave them, for table `t`.
fn intermediate_columns(steps: &[StepDef], t: &Arc<TableSchema>, upto: usize) -> Option<Vec<String>> {
    let before: Vec<StepDef> = steps.iter().filter(|s| s.index < upto).cloned().collect();
    let plan = build_plan(&before, t).ok()?;
    Some(plan.output.columns.iter().map(|c| c.name.clone()).collect())
}

fn build_plan(steps: &[StepDef], source: &Arc<TableSchema>) -> Result<Plan, String> {
    let mut cur: TableSchema = (**source).clone();
    let mut ops = Vec::new();
    let mut source_filters = Vec::new();
    // Still on the source's columns (no projection, mask or column rename yet).
    let mut source_layout = true;
    let mut filters_all_on_source = true;
    let mut dropped_source_columns = Vec::new();
    let mut projected_only = true;
    let mut column_list_ok = true;
    let mut updates_become_rows = false;
    for s in steps.iter().filter(|s| s.applies(&source.id)) {
        let at = || format!("{} on table {}", s.at(), source.id);
        match &s.step {
            Step::Filter(p) => {
                let c = expr::compile(p, &cur).map_err(|e| format!("{}: {:?}: {e}", at(), p.text))?;
                if source_layout {
                    source_filters.push(c.clone());
                } else {
                    filters_all_on_source = false;
                }
                let f = filter::RowFilter::new(c, &cur);
                // Judged on the columns as the filter sees them (after renames).
                updates_become_rows |= f.upserts_updates(&cur);
                ops.push(RowOp::Filter(f));
            }
            Step::Columns { include, exclude } => {
                let keep: Vec<usize> = cur
                    .columns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| match (include, exclude) {
                        (Some(l), _) => l.contains(&c.name),
                        (None, Some(l)) => !l.contains(&c.name),
                        (None, None) => true,
                    })
                    .map(|(i, _)| i)
                    .collect();
                if keep.is_empty() {
                    return Err(format!("{}: no column of the table would remain", at()));
                }
                // A column added later must flow past an exclude list, and a
                // publication column list would hold it back: only include
                // lists go into the publication.
                if exclude.is_some() {
                    column_list_ok = false;
                }
                if keep.len() == cur.columns.len() {
                    continue;
                }
                if projected_only {
                    for (i, c) in cur.columns.iter().enumerate() {
                        if !keep.contains(&i) {
                            dropped_source_columns.push(c.name.clone());
                        }
                    }
                }
                let had_key = cur.columns.iter().any(|c| c.key);
                cur.columns = keep.iter().map(|&i| cur.columns[i].clone()).collect();
                if had_key && !cur.columns.iter().any(|c| c.key) {
                    tracing::warn!(
                        table = %source.id,
                        "{}: every key column is dropped; sinks treat the table as keyless",
                        s.at()
                    );
                }
                ops.push(RowOp::Project(keep));
                // Later filters see fewer columns, but the same values: a
                // filter after a projection can still run on the source.
            }
            Step::Mask { columns, method, salt } => {
                let m = mask::RowMask::new(&mut cur, columns, *method, salt.clone())
                    .map_err(|e| format!("{}: {e}", at()))?;
                if let Some(m) = m {
                    ops.push(RowOp::Mask(m));
                    source_layout = false;
                    projected_only = false;
                }
            }
            Step::Rename { to, columns } => {
                if let Some(to) = to {
                    let (name, schema) = render_table_template(to, &source.id.schema, &source.id.name);
                    cur.id = TableId::new(schema.unwrap_or_else(|| cur.id.schema.clone()), name);
                }
                // All at once, by the names before this step: {a: b, b: a} swaps.
                for c in cur.columns.iter_mut() {
                    if let Some(new) = columns.get(&c.name) {
                        c.name = new.clone();
                        source_layout = false;
                        projected_only = false;
                    }
                }
                let mut seen = HashSet::new();
                for c in &cur.columns {
                    if !seen.insert(c.name.as_str()) {
                        return Err(format!("{}: two columns would be named {:?}", at(), c.name));
                    }
                }
            }
            Step::Ops { skip } => {
                ops.push(RowOp::Skip(*skip));
                // Postgres would turn updates into inserts and deletes before
                // this step sees them: later filters run in Sluice only.
                source_layout = false;
            }
        }
    }
    let rows_untouched = ops.is_empty();
    if !column_list_ok {
        dropped_source_columns.clear();
    }
    Ok(Plan {
        source: source.clone(),
        output: Arc::new(cur),
        ops,
        rows_untouched,
        updates_become_rows,
        source_filters,
        dropped_source_columns,
        filters_all_on_source,
    })
}

impl Plan {
    /// A row as the sink receives it when copied in a snapshot (`None`:
    /// filtered out). For `sluice verify`, which compares the source through
    /// the transforms with the replica.
    pub fn row(&self, values: Vec<sluice_core::Value>) -> Option<Vec<sluice_core::Value>> {
        let ev = ChangeEvent {
            op: Op::Read,
            table: self.source.clone(),
            before: None,
            after: Some(sluice_core::Row::new(values)),
            commit_position: sluice_core::EventPosition::Lsn(0),
            position: sluice_core::EventPosition::Lsn(0),
            tx_id: None,
            commit_ts_us: 0,
            snapshot: true,
            mysql: None,
        };
        self.run(ev, &mut |_, _| {}).and_then(|e| e.after).map(|r| r.values)
    }

    /// Run one event through the plan (zero or one event out).
    fn run(&self, ev: ChangeEvent, warn: &mut dyn FnMut(&str, &str)) -> Option<ChangeEvent> {
        let mut out = Vec::with_capacity(1);
        self.run_from(0, ev, warn, &mut out);
        out.pop()
    }

    /// Run `ev` through the ops from `start` on, appending what comes out.
    fn run_from(
        &self,
        start: usize,
        mut ev: ChangeEvent,
        warn: &mut dyn FnMut(&str, &str),
        out: &mut Vec<ChangeEvent>,
    ) {
        for (k, op) in self.ops.iter().enumerate().skip(start) {
            match op {
                RowOp::Skip(skip) => {
                    if skip[op_index(ev.op)] {
                        return;
                    }
                }
                RowOp::Filter(f) => match f.apply(ev, warn) {
                    filter::Out::Drop => return,
                    filter::Out::One(e) => ev = e,
                    filter::Out::Two(delete, create) => {
                        // A key change of a row that may have been outside:
                        // the old key goes, the new row comes.
                        self.run_from(k + 1, delete, warn, out);
                        ev = create;
                    }
                },
                RowOp::Project(keep) => {
                    for row in [ev.before.as_mut(), ev.after.as_mut()].into_iter().flatten() {
                        let mut vals = std::mem::take(&mut row.values);
                        row.values =
                            keep.iter().map(|&i| std::mem::replace(&mut vals[i], sluice_core::Value::Null)).collect();
                    }
                }
                RowOp::Mask(m) => {
                    for row in [ev.before.as_mut(), ev.after.as_mut()].into_iter().flatten() {
                        m.apply(&mut row.values);
                    }
                }
            }
        }
        ev.table = self.output.clone();
        out.push(ev);
    }
}

impl Transform for Chain {
    fn table_schema(&mut self, schema: &Arc<TableSchema>) -> Result<Arc<TableSchema>, TransformError> {
        Ok(self.plan(schema)?.output.clone())
    }

    fn table_id(&self, id: &TableId) -> TableId {
        let mut out = id.clone();
        for s in self.steps.iter().filter(|s| s.applies(id)) {
            if let Step::Rename { to: Some(to), .. } = &s.step {
                let (name, schema) = render_table_template(to, &id.schema, &id.name);
                out = TableId::new(schema.unwrap_or(out.schema), name);
            }
        }
        out
    }

    fn apply(&mut self, event: ChangeEvent, out: &mut Vec<ChangeEvent>) -> Result<(), TransformError> {
        let plan = self.plan(&event.table)?;
        if plan.rows_untouched {
            let mut ev = event;
            ev.table = plan.output.clone();
            out.push(ev);
            return Ok(());
        }
        let warned = &mut self.warned;
        let table = plan.source.id.clone();
        let mut warn = |expr: &str, err: &str| {
            let key = (table.clone(), expr.to_string());
            if warned.insert(key) {
                tracing::warn!(table = %table, "filter {expr:?} could not be evaluated ({err}); such rows do not match (logged once)");
            }
        };
        plan.run_from(0, event, &mut warn, out);
        Ok(())
    }

    fn is_identity(&self) -> bool {
        self.steps.is_empty()
    }

    fn updates_become_rows(&mut self, schema: &Arc<TableSchema>) -> bool {
        self.plan(schema).is_ok_and(|p| p.updates_become_rows)
    }

    fn fingerprint(&self, id: &TableId) -> String {
        let mut text = String::new();
        for s in self.steps.iter().filter(|s| s.applies(id)) {
            text.push_str(&format!("{:?}\n", s.step));
        }
        if text.is_empty() {
            return text;
        }
        // FNV-1a: stable across runs and builds of the same configuration.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::config::{ColumnsConfig, FilterConfig, MaskConfig, OpsConfig, RenameConfig};
    use sluice_core::testing::{col, table};
    use sluice_core::{Column, ColumnType, ReplicaIdentity, Row, Value};

    fn customers(identity: ReplicaIdentity) -> Arc<TableSchema> {
        // Every column has type id 23; the key column stays nullable.
        let columns = vec![
            Column { type_id: 23, key: true, ..col("id", ColumnType::Int32) },
            Column { type_id: 23, ..col("email", ColumnType::Text) },
            Column { type_id: 23, ..col("ssn", ColumnType::Text) },
            Column { type_id: 23, ..col("status", ColumnType::Text) },
            Column { type_id: 23, ..col("n", ColumnType::Int32) },
        ];
        Arc::new(TableSchema { replica_identity: identity, ..table("shop", "customers", columns) })
    }

    fn ev(t: &Arc<TableSchema>, op: Op, before: Option<Vec<Value>>, after: Option<Vec<Value>>) -> ChangeEvent {
        ChangeEvent {
            op,
            table: t.clone(),
            before: before.map(Row::new),
            after: after.map(Row::new),
            commit_position: sluice_core::EventPosition::Lsn(1),
            position: sluice_core::EventPosition::Lsn(1),
            tx_id: None,
            commit_ts_us: 0,
            snapshot: op == Op::Read,
            mysql: None,
        }
    }

    fn row(id: i64, email: &str, status: &str, n: i64) -> Vec<Value> {
        vec![
            Value::Int(id),
            Value::Text(email.into()),
            Value::Text("123".into()),
            Value::Text(status.into()),
            Value::Int(n),
        ]
    }

    fn all() -> Vec<String> {
        vec!["shop.*".into()]
    }

    fn chain(cfg: Vec<TransformConfig>) -> Chain {
        Chain::new(&cfg).unwrap()
    }

    fn run(c: &mut Chain, e: ChangeEvent) -> Vec<ChangeEvent> {
        let mut out = Vec::new();
        c.apply(e, &mut out).unwrap();
        out
    }

    fn mask(tables: Vec<String>, column: &str, with: &str, salt: Option<&str>) -> TransformConfig {
        TransformConfig::Mask(MaskConfig {
            tables,
            columns: vec![column.into()],
            with: with.into(),
            salt: salt.map(String::from),
        })
    }

    fn filter(w: &str) -> TransformConfig {
        TransformConfig::Filter(FilterConfig { tables: all(), condition: w.into() })
    }

    #[test]
    fn filter_turns_updates_into_inserts_and_deletes() {
        let t = customers(ReplicaIdentity::Full);
        let mut c = chain(vec![filter("status = 'live' AND n >= 10")]);
        let live = |n| row(1, "a@x", "live", n);
        let test = |n| row(1, "a@x", "test", n);
        assert_eq!(run(&mut c, ev(&t, Op::Read, None, Some(live(10)))).len(), 1);
        assert!(run(&mut c, ev(&t, Op::Create, None, Some(test(10)))).is_empty());
        let ops = |v: Vec<ChangeEvent>| v.iter().map(|e| e.op.code()).collect::<String>();
        assert_eq!(ops(run(&mut c, ev(&t, Op::Update, Some(live(10)), Some(live(11))))), "u");
        assert_eq!(ops(run(&mut c, ev(&t, Op::Update, Some(test(10)), Some(live(11))))), "c");
        assert_eq!(ops(run(&mut c, ev(&t, Op::Update, Some(live(10)), Some(live(9))))), "d");
        assert_eq!(ops(run(&mut c, ev(&t, Op::Update, Some(test(10)), Some(test(11))))), "");
        assert_eq!(ops(run(&mut c, ev(&t, Op::Delete, Some(live(10)), None))), "d");
        assert_eq!(ops(run(&mut c, ev(&t, Op::Delete, Some(test(10)), None))), "");
        assert_eq!(ops(run(&mut c, ev(&t, Op::Truncate, None, None))), "t");
        // Moving in: the insert carries the new row, unsent values from the old one.
        let mut partial = live(12);
        partial[1] = Value::Unchanged;
        let out = run(&mut c, ev(&t, Op::Update, Some(test(10)), Some(partial)));
        assert_eq!(out[0].before, None);
        assert_eq!(out[0].after.as_ref().unwrap().values, live(12));
        // Moving out: the delete carries the old row.
        let out = run(&mut c, ev(&t, Op::Update, Some(live(10)), Some(test(10))));
        assert_eq!(out[0].before.as_ref().unwrap().values, live(10));
        assert!(out[0].after.is_none());
    }

    #[test]
    fn filter_with_unknown_old_rows() {
        // REPLICA IDENTITY DEFAULT: no old row unless the key changed.
        let t = customers(ReplicaIdentity::Default);
        let mut c = chain(vec![filter("status = 'live'")]);
        let out = run(&mut c, ev(&t, Op::Update, None, Some(row(1, "a", "live", 1))));
        assert_eq!(out[0].op, Op::Create, "an upsert: the row may or may not have been inside");
        let out = run(&mut c, ev(&t, Op::Update, None, Some(row(1, "a", "test", 1))));
        assert_eq!(out[0].op, Op::Delete);
        let b = &out[0].before.as_ref().unwrap().values;
        assert_eq!(b[0], Value::Int(1));
        assert_eq!(b[3], Value::Unchanged, "only the key is known");
        // A filter on the key alone is exact.
        let mut k = chain(vec![filter("id < 5")]);
        assert_eq!(run(&mut k, ev(&t, Op::Update, None, Some(row(1, "a", "x", 1))))[0].op, Op::Update);
        assert!(run(&mut k, ev(&t, Op::Update, None, Some(row(7, "a", "x", 1)))).is_empty());
        assert!(c.warnings(&[t.clone()], false)[0].contains("REPLICA IDENTITY"));
        assert!(k.warnings(&[t.clone()], false).is_empty());
        assert!(c.warnings(&[t], true).is_empty());
    }

    #[test]
    fn filters_that_send_updates_as_upserts_need_whole_rows() {
        let rename = || {
            TransformConfig::Rename(RenameConfig {
                tables: all(),
                to: None,
                columns: [("status".to_string(), "state".to_string())].into(),
            })
        };
        for (identity, steps, want) in [
            (ReplicaIdentity::Default, vec![filter("status = 'live'")], true),
            (ReplicaIdentity::Default, vec![rename(), filter("state = 'live'")], true),
            (ReplicaIdentity::Default, vec![filter("id < 5")], false),
            (ReplicaIdentity::Full, vec![filter("status = 'live'")], false),
            (ReplicaIdentity::Default, vec![rename()], false),
        ] {
            let mut c = chain(steps);
            assert_eq!(c.updates_become_rows(&customers(identity)), want, "{identity:?}");
        }
    }

    #[test]
    fn columns_masks_renames_and_ops() {
        let t = customers(ReplicaIdentity::Full);
        let mut c = chain(vec![
            TransformConfig::Columns(ColumnsConfig { tables: all(), include: None, exclude: Some(vec!["ssn".into()]) }),
            mask(all(), "email", "sha256", Some("s")),
            mask(vec!["shop.customers".into()], "n", "keep_last(1)", None),
            TransformConfig::Rename(RenameConfig {
                tables: all(),
                to: Some("analytics.{table}_v2".into()),
                columns: [("status".to_string(), "state".to_string())].into(),
            }),
            filter("state <> 'gone'"),
            TransformConfig::Ops(OpsConfig { tables: all(), skip: vec!["delete".into()] }),
        ]);
        let out = c.table_schema(&t).unwrap();
        assert_eq!(out.id, TableId::new("analytics", "customers_v2"));
        assert_eq!(c.table_id(&t.id), out.id);
        let names: Vec<&str> = out.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "email", "state", "n"]);
        assert_eq!(out.columns[3].ty, ColumnType::Text, "a masked number becomes text");
        assert_eq!(out.columns[3].source_type, "text");
        let e = run(&mut c, ev(&t, Op::Update, Some(row(1, "a@x", "live", 42)), Some(row(1, "b@x", "live", 42))));
        assert!(Arc::ptr_eq(&e[0].table, &out), "events carry the one output schema");
        let hash = |s: &str| Value::Text(mask::sha256_hex(s, "s"));
        assert_eq!(
            e[0].before.as_ref().unwrap().values,
            vec![Value::Int(1), hash("a@x"), Value::Text("live".into()), Value::Text("*2".into())]
        );
        assert_eq!(e[0].after.as_ref().unwrap().values[1], hash("b@x"));
        assert!(run(&mut c, ev(&t, Op::Delete, Some(row(1, "a", "live", 1)), None)).is_empty(), "deletes skipped");
        assert!(
            run(&mut c, ev(&t, Op::Create, None, Some(row(2, "a", "gone", 1)))).is_empty(),
            "filter on a renamed column"
        );
        // Other tables pass untouched but renamed.
        let mut other = (*t).clone();
        other.id = TableId::new("shop", "orders");
        let other = Arc::new(other);
        assert_eq!(c.table_schema(&other).unwrap().id, TableId::new("analytics", "orders_v2"));
        assert!(c.check_tables(&[t.clone(), other.clone()]).is_empty());
    }

    #[test]
    fn key_changes_renames_and_fingerprints() {
        // DEFAULT identity: a key change carries the old key only.
        let t = customers(ReplicaIdentity::Default);
        let mut c = chain(vec![filter("status = 'live'")]);
        let old_key = vec![Value::Int(1), Value::Unchanged, Value::Unchanged, Value::Unchanged, Value::Unchanged];
        let out = run(&mut c, ev(&t, Op::Update, Some(old_key), Some(row(2, "a", "live", 1))));
        let ops: Vec<&str> = out.iter().map(|e| e.op.code()).collect();
        assert_eq!(ops, ["d", "c"], "the old key may be in the replica");
        assert_eq!(out[0].before.as_ref().unwrap().values[0], Value::Int(1));
        assert_eq!(out[1].after.as_ref().unwrap().values[0], Value::Int(2));
        // Column renames apply at once.
        let mut c = chain(vec![TransformConfig::Rename(RenameConfig {
            tables: all(),
            to: None,
            columns: [("email".to_string(), "ssn".to_string()), ("ssn".to_string(), "email".to_string())].into(),
        })]);
        let names: Vec<String> = c.table_schema(&t).unwrap().columns.iter().map(|c| c.name.clone()).collect();
        assert_eq!(names, ["id", "ssn", "email", "status", "n"]);
        // Fingerprints follow the steps that apply.
        let a = chain(vec![filter("n > 1")]);
        let b = chain(vec![filter("n > 2")]);
        assert_ne!(a.fingerprint(&t.id), b.fingerprint(&t.id));
        assert_eq!(a.fingerprint(&t.id), chain(vec![filter("n > 1")]).fingerprint(&t.id));
        assert_eq!(a.fingerprint(&TableId::new("other", "x")), "");
    }

    #[test]
    fn a_masked_column_renamed_at_the_source_stops_the_table() {
        let t = customers(ReplicaIdentity::Full);
        let mut c = chain(vec![mask(all(), "email", "sha256", None)]);
        c.plan(&t).unwrap();
        let mut renamed = (*t).clone();
        renamed.columns[1].name = "mail".into();
        renamed.version = 2;
        let e = c.plan(&Arc::new(renamed)).unwrap_err();
        assert!(e.message.contains("column email of table shop.customers is gone"), "{}", e.message);
        // A plain drop leaks nothing and goes on.
        let mut dropped = (*t).clone();
        dropped.columns.remove(1);
        dropped.version = 3;
        let mut c = chain(vec![mask(all(), "email", "sha256", None)]);
        c.plan(&t).unwrap();
        assert!(c.plan(&Arc::new(dropped)).is_ok());
    }

    #[test]
    fn problems_are_found_at_start() {
        let t = customers(ReplicaIdentity::Default);
        let mut c = chain(vec![
            filter("nope > 1"),
            TransformConfig::Columns(ColumnsConfig { tables: all(), include: None, exclude: Some(vec!["snn".into()]) }),
            mask(all(), "id", "redact", None),
        ]);
        let errs = c.check_tables(&[t.clone()]);
        assert!(errs.iter().any(|e| e.contains("unknown column nope")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("transforms[1].columns") && e.contains("\"snn\"")), "{errs:?}");
        let mut c = chain(vec![mask(all(), "id", "redact", None)]);
        let errs = c.check_tables(&[t.clone()]);
        assert!(errs.iter().any(|e| e.contains("part of the key")), "{errs:?}");
        let mut two = (*t).clone();
        two.id = TableId::new("shop", "other");
        let mut c = chain(vec![TransformConfig::Rename(RenameConfig {
            tables: all(),
            to: Some("x.same".into()),
            columns: Default::default(),
        })]);
        let errs = c.check_tables(&[t, Arc::new(two)]);
        assert!(errs.iter().any(|e| e.contains("both renamed to x.same")), "{errs:?}");
        assert!(Chain::new(&[filter("id = ")]).is_err());
    }

    #[test]
    fn pushdown_respects_replica_identity() {
        let full = customers(ReplicaIdentity::Full);
        let def = customers(ReplicaIdentity::Default);
        let cfg = vec![
            filter("status <> 'test'"),
            TransformConfig::Columns(ColumnsConfig { tables: all(), include: None, exclude: Some(vec!["ssn".into()]) }),
        ];
        let p = pushdown::postgres(&mut chain(cfg.clone()), &full);
        assert_eq!(p.row_filter.as_deref(), Some("(\"status\" <> 'test')"));
        assert_eq!(p.columns, None, "no column lists under FULL");
        let p = pushdown::postgres(&mut chain(cfg), &def);
        assert_eq!(p.row_filter, None, "status is not in the identity");
        assert_eq!(p.columns, None, "exclude lists are not pushed: a column added later must flow");
        let include = vec![TransformConfig::Columns(ColumnsConfig {
            tables: all(),
            include: Some(vec!["id".into(), "email".into(), "n".into()]),
            exclude: None,
        })];
        let p = pushdown::postgres(&mut chain(include.clone()), &def);
        assert_eq!(p.columns.unwrap(), ["id", "email", "n"]);
        let no_key = vec![TransformConfig::Columns(ColumnsConfig {
            tables: all(),
            include: Some(vec!["email".into()]),
            exclude: None,
        })];
        assert_eq!(pushdown::postgres(&mut chain(no_key), &def).columns, None, "identity columns stay published");
        let p = pushdown::postgres(&mut chain(vec![filter("id > 3")]), &def);
        assert_eq!(p.row_filter.as_deref(), Some("(\"id\" > (3)::bigint)"));
        // After an ops step, Postgres's own u → c/d would come first.
        let p = pushdown::postgres(
            &mut chain(vec![
                TransformConfig::Ops(OpsConfig { tables: all(), skip: vec!["delete".into()] }),
                filter("id > 3"),
            ]),
            &def,
        );
        assert!(p.is_empty());
        // After a mask, filters run in Sluice only.
        let p = pushdown::postgres(&mut chain(vec![mask(all(), "email", "null", None), filter("id > 3")]), &def);
        assert!(p.is_empty());
    }
}
