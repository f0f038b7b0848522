//! The target's tables: created when missing, columns added and dropped as
//! the source's did, and the key checked for a unique index before the first
//! insert (without one, inserts could not be matched to rows).
//!
//! Invariant: DDL runs outside any open apply transaction's statements (all
//! pipelined statements are answered first), and clears the prepared
//! statements that name the table.

use std::sync::Arc;

use sluice_core::error::{ErrorKind, SinkError};
use sluice_core::{TableId, TableSchema};

use crate::*;

impl PostgresSink {
    /// Make sure the target table exists and matches `schema` (adding and
    /// dropping columns as the source did).
    pub(crate) async fn target(&mut self, schema: &Arc<TableSchema>) -> Result<(), SinkError> {
        if let Some(t) = self.targets.get(&schema.id) {
            if Arc::ptr_eq(&t.schema, schema) || t.schema.same_shape(schema) {
                return Ok(());
            }
        }
        self.flush_batch().await?;
        // Indexes dropped for a copy come back before the table changes shape.
        if self.targets.contains_key(&schema.id) {
            self.rebuild_indexes(&schema.id).await?;
        }
        self.begin().await?;
        let tschema = self.cfg.schema.clone().unwrap_or_else(|| schema.id.schema.clone());
        let name = format!("{}.{}", quote_ident(&tschema), quote_ident(&schema.id.name));
        let (types, convs): (Vec<String>, Vec<Conv>) = schema.columns.iter().map(pg_type).unzip();
        // Under REPLICA IDENTITY FULL every column is "identity": such tables
        // are matched by their whole old row, like tables without a key.
        let key: Vec<usize> = if matches!(schema.replica_identity, ReplicaIdentity::Full | ReplicaIdentity::Nothing) {
            Vec::new()
        } else {
            schema.key_columns().map(|(i, _)| i).collect()
        };
        let client = self.client().await?;
        let table = TargetTable { schema, tschema: &tschema, name: &name, types: &types };
        let same_types = match self.targets.get(&schema.id) {
            None => {
                if self.cfg.create_tables {
                    table.create(&client, &key).await?;
                }
                table.reconcile(&client).await?
            }
            Some(old) => {
                table.follow(&client, old, self.cfg.keep_dropped_columns).await?;
                false
            }
        };
        let bin = schema
            .columns
            .iter()
            .zip(types.iter().zip(&convs))
            .map(|(c, (t, v))| copy::encoding(t, *v, &c.ty))
            .collect();
        self.stmts.clear();
        self.targets.insert(
            schema.id.clone(),
            Target { name, schema: schema.clone(), types, convs, key, bin, same_types, arbiter: false },
        );
        Ok(())
    }

    /// Before a table's first insert: it must have a unique index (or
    /// primary key) on exactly the key columns, immediate, without predicate
    /// or expressions: the arbiter `ON CONFLICT (key)` needs, and what makes
    /// a plain insert of a key the target has fail instead of adding a
    /// second row.
    pub(crate) async fn check_arbiter(&mut self, id: &TableId) -> Result<(), SinkError> {
        let t = &self.targets[id];
        if t.arbiter || t.key.is_empty() {
            return Ok(());
        }
        let name = t.name.clone();
        let key: Vec<String> = t.key.iter().map(|&i| t.schema.columns[i].name.clone()).collect();
        let client = self.client().await?;
        let found: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = $1::text::regclass AND i.indisunique \
                   AND i.indimmediate AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL \
                   AND i.indnkeyatts = cardinality($2::text[]) \
                   AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text) \
                        FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
                        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                        WHERE k.ord <= i.indnkeyatts) \
                     = (SELECT array_agg(k ORDER BY k) FROM unnest($2::text[]) k))",
                &[&name, &key],
            )
            .await
            .map_err(|e| sql_err(format!("reading the unique indexes of {name}"), e))?
            .get(0);
        if !found {
            return Err(SinkError::new(
                ErrorKind::Table,
                format!(
                    "postgres sink: {id}: the target table {name} has no primary key or unique index on ({}), the \
                     source's key, so changes cannot be matched to its rows; add PRIMARY KEY ({}) to it",
                    key.join(", "),
                    key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        self.targets.get_mut(id).expect("target").arbiter = true;
        Ok(())
    }
}

/// A source table as the target should hold it: its target schema, quoted
/// name and the target type of each column.
struct TargetTable<'a> {
    schema: &'a TableSchema,
    tschema: &'a str,
    name: &'a str,
    types: &'a [String],
}

impl TargetTable<'_> {
    /// `CREATE TABLE IF NOT EXISTS`, with the key as primary key.
    async fn create(&self, client: &Client, key: &[usize]) -> Result<(), SinkError> {
        let (schema, name) = (self.schema, self.name);
        let cols: Vec<String> =
            schema.columns.iter().zip(self.types).map(|(c, t)| format!("{} {t}", quote_ident(&c.name))).collect();
        let pk = if key.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = key.iter().map(|&i| quote_ident(&schema.columns[i].name)).collect();
            format!(", PRIMARY KEY ({})", names.join(", "))
        };
        let ddl = format!(
            "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE IF NOT EXISTS {name} ({}{pk})",
            quote_ident(self.tschema),
            cols.join(", ")
        );
        client.batch_execute(&ddl).await.map_err(|e| sql_err(format!("creating {name}"), e))
    }

    /// A table met for the first time in this run, which may predate it:
    /// refuse columns whose type differs, add the columns the source has
    /// gained since (columns the target has beyond the source's are kept:
    /// they may be the user's). Returns whether every column has the very
    /// type (OID) of its source column.
    async fn reconcile(&self, client: &Client) -> Result<bool, SinkError> {
        let (schema, name) = (self.schema, self.name);
        // Each target column's type, and the type the source's column maps
        // to (both as OIDs, so spellings do not matter).
        let rows = client
            .query(
                "SELECT a.attname::text, a.atttypid::int8, format_type(a.atttypid, a.atttypmod), \
                   (SELECT to_regtype(w.t)::oid::int8 FROM unnest($3::text[], $4::text[]) AS w(n, t) WHERE w.n = a.attname) \
                 FROM pg_attribute a WHERE a.attrelid = to_regclass($1 || '.' || $2) AND a.attnum > 0 AND NOT a.attisdropped",
                &[
                    &quote_ident(self.tschema),
                    &quote_ident(&schema.id.name),
                    &schema.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
                    &self.types,
                ],
            )
            .await
            .map_err(|e| sql_err(format!("reading the columns of {name}"), e))?;
        for r in &rows {
            let (col, have, have_name, want) =
                (r.get::<_, String>(0), r.get::<_, i64>(1), r.get::<_, String>(2), r.get::<_, Option<i64>>(3));
            if want.is_some_and(|w| w != have) {
                let want_name = &self.types[schema.column_index(&col).expect("source column")];
                return Err(SinkError::new(
                    ErrorKind::Table,
                    format!(
                        "postgres sink: {}: column {col} changed type: it is {have_name} in the target table \
                         {name} but {want_name} from the source; Sluice does not follow type changes: alter \
                         the target column and copy the table again",
                        schema.id
                    ),
                ));
            }
        }
        if rows.is_empty() {
            return Err(SinkError::new(
                ErrorKind::Table,
                format!(
                    "postgres sink: target table {name} does not exist (create it, or set sink.create_tables: true)"
                ),
            ));
        }
        let same_types = schema
            .columns
            .iter()
            .all(|c| rows.iter().any(|r| r.get::<_, String>(0) == c.name && r.get::<_, i64>(1) == c.type_id as i64));
        let have: HashSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
        let add: Vec<String> = schema
            .columns
            .iter()
            .zip(self.types)
            .filter(|(c, _)| !have.contains(&c.name))
            .map(|(c, t)| format!("ADD COLUMN IF NOT EXISTS {} {t}", quote_ident(&c.name)))
            .collect();
        self.alter(client, &add).await?;
        Ok(same_types)
    }

    /// A schema change mid-stream: follow ADD and DROP COLUMN.
    async fn follow(&self, client: &Client, old: &Target, keep_dropped: bool) -> Result<(), SinkError> {
        let schema = self.schema;
        let mut ddl = Vec::new();
        for (c, t) in schema.columns.iter().zip(self.types) {
            match old.schema.columns.iter().position(|o| o.name == c.name) {
                None => ddl.push(format!("ADD COLUMN IF NOT EXISTS {} {t}", quote_ident(&c.name))),
                Some(j) if old.types[j] != *t => {
                    return Err(SinkError::new(
                        ErrorKind::Table,
                        format!(
                            "postgres sink: {}: column {} changed type from {} to {t}; Sluice does not follow \
                             type changes: alter the target column and restart",
                            schema.id, c.name, old.types[j]
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        for o in &old.schema.columns {
            if schema.column_index(&o.name).is_none() && !keep_dropped {
                ddl.push(format!("DROP COLUMN IF EXISTS {}", quote_ident(&o.name)));
            }
        }
        self.alter(client, &ddl).await
    }

    async fn alter(&self, client: &Client, changes: &[String]) -> Result<(), SinkError> {
        if changes.is_empty() {
            return Ok(());
        }
        let name = self.name;
        let sql = format!("ALTER TABLE {name} {}", changes.join(", "));
        client.batch_execute(&sql).await.map_err(|e| sql_err(format!("altering {name}"), e))?;
        tracing::info!(table = %self.schema.id, "target table altered: {}", changes.join(", "));
        Ok(())
    }
}
