-- The same load with Spark SQL (3.5 or later, into a Delta or Iceberg table
-- that supports MERGE INTO). Not run by Sluice's tests (no Spark here); the
-- DuckDB recipe next to it is, step for step the same.
--
-- `changes` is the batch's files (mergeSchema: a schema change mid-batch
-- starts a new file with other columns), e.g.
--   CREATE OR REPLACE TEMP VIEW changes AS
--   SELECT *, _metadata.file_path AS filename, _metadata.row_index AS file_row_number
--   FROM parquet.`out/public.items/{0000000001,0000000002}.parquet`;   -- with spark.sql.parquet.mergeSchema=true
-- A TRUNCATE (`__op = 't'`) in the batch: empty the table and keep only the
-- rows after the last one first, as in the DuckDB recipe.

MERGE INTO items AS t
USING (
  SELECT * FROM (
    SELECT id, __op, qty, __last_d > 0 AS __deleted,
           last(CASE WHEN __seq > __last_d AND NOT array_contains(__unchanged, 'big') THEN named_struct('v', big) END, true)
             OVER w AS big_s,
           last(CASE WHEN __seq > __last_d AND NOT array_contains(__unchanged, 'doc') THEN named_struct('v', doc) END, true)
             OVER w AS doc_s,
           row_number() OVER (PARTITION BY id ORDER BY __seq DESC) AS rn
    FROM (
      SELECT *, coalesce(max(CASE WHEN __op = 'd' THEN __seq END) OVER (PARTITION BY id), 0) AS __last_d
      FROM (SELECT *, row_number() OVER (ORDER BY filename, file_row_number) AS __seq FROM changes)
    )
    WINDOW w AS (PARTITION BY id ORDER BY __seq ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
  ) WHERE rn = 1
) AS s
ON t.id = s.id
WHEN MATCHED AND s.__op = 'd' THEN DELETE
WHEN MATCHED THEN UPDATE SET
  qty = s.qty,
  big = CASE WHEN s.big_s IS NULL AND NOT s.__deleted THEN t.big ELSE s.big_s.v END,
  doc = CASE WHEN s.doc_s IS NULL AND NOT s.__deleted THEN t.doc ELSE s.doc_s.v END
WHEN NOT MATCHED AND s.__op <> 'd' THEN
  INSERT (id, qty, big, doc) VALUES (s.id, s.qty, s.big_s.v, s.doc_s.v);
