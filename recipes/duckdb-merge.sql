-- Load one batch of Sluice's Parquet change files into a current-state table
-- with DuckDB (1.4 or later: MERGE INTO). Run it for each new batch of
-- completed files of one table directory, oldest batch first.
--
-- Example table: items (id bigint primary key, qty integer, big varchar, doc varchar),
-- where big and doc can be TOASTed on the source (REPLICA IDENTITY DEFAULT).
-- Adapt the names: key columns in PARTITION BY / ON, every column that
-- `sluice check` lists as TOASTable gets a `<col>_s` line like big and doc,
-- every other column is copied as qty is.
--
-- Before running, name the batch's files (in name order) with
--   SET VARIABLE files = ['out/public.items/0000000001.parquet', ...];

-- 1. The batch's changes in commit order: files in name order, rows in file order
--    (union_by_name: a schema change mid-batch starts a new file with other columns).
CREATE OR REPLACE TEMP TABLE sluice_changes AS
SELECT *, row_number() OVER (ORDER BY filename, file_row_number) AS __seq
FROM read_parquet(getvariable('files'), filename = true, file_row_number = true, union_by_name = true);

-- 2. A TRUNCATE (`t`) empties the table; only the changes after the last one count.
DELETE FROM items WHERE EXISTS (SELECT 1 FROM sluice_changes WHERE __op = 't');
DELETE FROM sluice_changes
WHERE __seq <= (SELECT coalesce(max(__seq), 0) FROM sluice_changes WHERE __op = 't');

-- 3. Per key its last change. A key change arrives as a `d` row of the old key
--    and a `c` row (the whole row) of the new one, so keys never need joining.
--    A column an update did not send (named in __unchanged: an unchanged
--    TOASTed value) takes the last value sent for that key in this batch
--    after the key's last `d`, wrapped in a struct so that a NULL that was
--    sent is kept apart from "not sent" (NULL struct: the table keeps its
--    value, unless the key was deleted in the batch).
CREATE OR REPLACE TEMP TABLE sluice_last AS
WITH ch AS (
    SELECT *, coalesce(max(CASE WHEN __op = 'd' THEN __seq END) OVER (PARTITION BY id), 0) AS __last_d
    FROM sluice_changes
)
SELECT id, __op, qty, __last_d > 0 AS __deleted,
       last_value(CASE WHEN __seq > __last_d AND NOT list_contains(__unchanged, 'big') THEN {'v': big} END
                  IGNORE NULLS) OVER w AS big_s,
       last_value(CASE WHEN __seq > __last_d AND NOT list_contains(__unchanged, 'doc') THEN {'v': doc} END
                  IGNORE NULLS) OVER w AS doc_s
FROM ch
WINDOW w AS (PARTITION BY id ORDER BY __seq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
QUALIFY row_number() OVER (PARTITION BY id ORDER BY __seq DESC) = 1;

-- 4. Deletes by key, everything else upserts by key.
MERGE INTO items AS t USING sluice_last AS s ON t.id = s.id
WHEN MATCHED AND s.__op = 'd' THEN DELETE
WHEN MATCHED THEN UPDATE SET
    qty = s.qty,
    big = CASE WHEN s.big_s IS NULL AND NOT s.__deleted THEN t.big ELSE s.big_s.v END,
    doc = CASE WHEN s.doc_s IS NULL AND NOT s.__deleted THEN t.doc ELSE s.doc_s.v END
WHEN NOT MATCHED AND s.__op <> 'd' THEN
    INSERT (id, qty, big, doc) VALUES (s.id, s.qty, s.big_s.v, s.doc_s.v);
