-- The same load with Spark SQL (3.5 or later, into a Delta or Iceberg table
-- that supports MERGE INTO). Not run by Sluice's tests (no Spark here); the
-- DuckDB recipe next to it is, step for step the same.
--
-- `changes` is the batch's files, e.g.
--   CREATE OR REPLACE TEMP VIEW changes AS
--   SELECT *, _metadata.file_path AS filename, _metadata.row_index AS file_row_number
--   FROM parquet.`out/public.items/{0000000001,0000000002}.parquet`;
-- (A TRUNCATE in the batch: empty the table and keep only later rows first, as in the DuckDB recipe.)

MERGE INTO items AS t
USING (
  SELECT * FROM (
    SELECT id, __op, qty,
           last(CASE WHEN NOT array_contains(__unchanged, 'big') THEN named_struct('v', big) END, true) OVER w AS big_s,
           last(CASE WHEN NOT array_contains(__unchanged, 'doc') THEN named_struct('v', doc) END, true) OVER w AS doc_s,
           row_number() OVER (PARTITION BY id ORDER BY filename DESC, file_row_number DESC) AS rn
    FROM changes
    WINDOW w AS (PARTITION BY id ORDER BY filename, file_row_number ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
  ) WHERE rn = 1
) AS s
ON t.id = s.id
WHEN MATCHED AND s.__op = 'd' THEN DELETE
WHEN MATCHED THEN UPDATE SET
  qty = s.qty,
  big = CASE WHEN s.big_s IS NULL THEN t.big ELSE s.big_s.v END,
  doc = CASE WHEN s.doc_s IS NULL THEN t.doc ELSE s.doc_s.v END
WHEN NOT MATCHED AND s.__op <> 'd' THEN
  INSERT (id, qty, big, doc) VALUES (s.id, s.qty, s.big_s.v, s.doc_s.v);
