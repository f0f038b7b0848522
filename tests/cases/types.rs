//! Every supported type, through the snapshot and the stream, into JSONL.

use serde_json::{json, Value};

use crate::harness::*;

const INSERTS: &str = r#"
INSERT INTO public.all_types VALUES
 ({a}, true, -32768, 2147483647, -9223372036854775808, 1.5, 'NaN', '12345678901234567890.123456789', 3.141,
  E'héllo "quoted" \\ back\\slash\nnew line\ttab', 'ünïcödé😀', 'ab', '\x00ff10', '2024-02-29', '23:59:59.999999',
  '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.5+02', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
  '{"a": [1, 2.5, "x"]}', '{"k": {"n": null}}', '{1,NULL,3}', '{"a b","c,d",NULL,"\"q\""}', 'happy', '1 day 02:03:04', 42,
  '0044-03-15 BC', '{{1,2},{3,4}}', '{happy,sad}'),
 ({b}, false, 0, 0, 0, '-Infinity', 'Infinity', 'NaN', -0.5, '', '', '', '\x', 'infinity', '00:00:00', '-infinity',
  '1970-01-01 00:00:00+00', '00000000-0000-0000-0000-000000000000', '[]', '{}', '{}', '{}', 'sad', '-1 mons', 0,
  '10000-01-01', '{}', '{}'),
 ({c}, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
"#;

fn expected(id: i64) -> Value {
    match id % 10 {
        1 => json!({"id": id, "b": true, "i2": -32768, "i4": 2147483647, "i8": i64::MIN, "f4": 1.5, "f8": "NaN",
            "n": "12345678901234567890.123456789", "n2": "3.141", "t": "héllo \"quoted\" \\ back\\slash\nnew line\ttab",
            "vc": "ünïcödé😀", "ch": "ab ", "by": "AP8Q", "d": "2024-02-29", "tm": "23:59:59.999999",
            "ts": "2024-01-02T03:04:05.123456", "tz": "2024-01-02T01:04:05.5Z", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "j": {"a": [1, 2.5, "x"]}, "jb": {"k": {"n": null}}, "ai": [1, null, 3], "at": ["a b", "c,d", null, "\"q\""],
            "e": "happy", "iv": "1 day 02:03:04", "o": 42, "bc": "-0043-03-15", "a2": [[1, 2], [3, 4]],
            "ea": ["happy", "sad"]}),
        2 => json!({"id": id, "b": false, "i2": 0, "i4": 0, "i8": 0, "f4": "-Infinity", "f8": "Infinity", "n": "NaN",
            "n2": "-0.500", "t": "", "vc": "", "ch": "   ", "by": "", "d": "infinity", "tm": "00:00:00", "ts": "-infinity",
            "tz": "1970-01-01T00:00:00Z", "u": "00000000-0000-0000-0000-000000000000", "j": [], "jb": {}, "ai": [], "at": [],
            "e": "sad", "iv": "-1 mons", "o": 0, "bc": "+10000-01-01", "a2": [], "ea": []}),
        _ => {
            json!({"id": id, "b": null, "i2": null, "i4": null, "i8": null, "f4": null, "f8": null, "n": null, "n2": null,
            "t": null, "vc": null, "ch": null, "by": null, "d": null, "tm": null, "ts": null, "tz": null, "u": null, "j": null,
            "jb": null, "ai": null, "at": null, "e": null, "iv": null, "o": null, "bc": null, "a2": null, "ea": null})
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_in_snapshot_and_stream() {
    let env = Env::new("types");
    let c = env.client().await;
    c.batch_execute(
        "CREATE TYPE mood AS ENUM ('happy', 'sad');
         CREATE DOMAIN posint AS int CHECK (VALUE > 0);
         CREATE DOMAIN price AS numeric(8,2);
         CREATE TABLE public.domains (id posint PRIMARY KEY, p price, at timestamptz);
         CREATE TABLE public.all_types (id int PRIMARY KEY, b bool, i2 smallint, i4 int, i8 bigint, f4 real, f8 double precision,
           n numeric, n2 numeric(10,3), t text, vc varchar(10), ch char(3), by bytea, d date, tm time, ts timestamp,
           tz timestamptz, u uuid, j json, jb jsonb, ai int[], at text[], e mood, iv interval, o oid, bc date, a2 int[],
           ea mood[])",
    )
    .await
    .unwrap();
    c.batch_execute(&INSERTS.replace("{a}", "1").replace("{b}", "2").replace("{c}", "3")).await.unwrap();
    c.batch_execute("INSERT INTO domains VALUES (1, 9.5, '2024-01-01 00:00:00+00')").await.unwrap();
    let p = env.pipeline("types", &["public.all_types", "public.domains"], &env.files_sink("types", "jsonl"), "");
    catch_up(&p).await;
    c.batch_execute(&INSERTS.replace("{a}", "11").replace("{b}", "12").replace("{c}", "13")).await.unwrap();
    c.batch_execute("INSERT INTO domains VALUES (2, 10, '2024-01-01 00:00:00+00')").await.unwrap();
    catch_up(&p).await;

    let out = read_jsonl(&env.out("types"));
    // Domains decode like their base types, in the snapshot and the stream alike.
    let doms: Vec<Value> = out["public.domains"].iter().map(|e| Value::Object(e.after.clone().unwrap())).collect();
    assert_eq!(
        doms,
        vec![
            json!({"id": 1, "p": "9.50", "at": "2024-01-01T00:00:00Z"}),
            json!({"id": 2, "p": "10.00", "at": "2024-01-01T00:00:00Z"})
        ]
    );
    let evs = &out["public.all_types"];
    assert_eq!(evs.len(), 6, "{evs:#?}");
    for e in evs {
        let after = Value::Object(e.after.clone().unwrap());
        let id = after["id"].as_i64().unwrap();
        assert_eq!(after, expected(id), "row {id}");
        let src = &e.raw["source"];
        assert_eq!(src["connector"], "postgresql");
        assert_eq!(src["db"], "postgres");
        assert_eq!(src["schema"], "public");
        assert_eq!(src["table"], "all_types");
        assert!(src["lsn"].as_u64().unwrap() > 0);
        if id < 10 {
            assert_eq!(e.op, "r");
            assert_eq!(src["snapshot"], "true");
        } else {
            assert_eq!(e.op, "c");
            assert_eq!(src["snapshot"], "false");
            assert!(src["txId"].as_u64().unwrap() > 0);
            assert!(src["ts_ms"].as_i64().unwrap() > 1_600_000_000_000);
        }
        assert!(e.before.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_into_parquet_and_arrow() {
    let env = Env::new("types-columnar");
    let c = env.client().await;
    c.batch_execute(
        "CREATE TABLE public.t (id int PRIMARY KEY, n numeric(12,2), big numeric(50,5), f real, ts timestamptz, d date, by bytea, tx text, ai int[])",
    )
    .await
    .unwrap();
    c.batch_execute(
        "INSERT INTO t VALUES (1, 12.50, 123456789012345678901234567890123456789012345.12345, 1.5, '2024-01-02 03:04:05.5+00', '2024-02-29', '\\x0102', 'x', '{1,2}'),
                              (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    )
    .await
    .unwrap();
    for format in ["parquet", "arrow"] {
        let p = env.pipeline(&format!("col{format}"), &["public.t"], &env.files_sink(format, format), "");
        catch_up(&p).await;
    }
    let out = read_parquet(&env.out("parquet"));
    let rows = replay(&out["public.t"], &["id"]).unwrap();
    let r1 = &rows["\"1\""];
    assert_eq!(r1["n"], "12.50");
    assert_eq!(r1["big"], "123456789012345678901234567890123456789012345.12345");
    assert_eq!(r1["f"], "1.5");
    assert_eq!(r1["ts"], "2024-01-02T03:04:05.500Z");
    assert_eq!(r1["d"], "2024-02-29");
    assert_eq!(r1["tx"], "x");
    assert_eq!(r1["ai"], "[1,2]");
    let r2 = &rows["\"2\""];
    assert_eq!(r2["n"], Value::Null);

    // Arrow IPC files carry the same schema and rows.
    let files = completed_files(&env.out("arrow").join("public.t"), "arrow");
    assert_eq!(files.len(), 1);
    let reader = arrow_ipc::reader::FileReader::try_new(std::fs::File::open(&files[0]).unwrap(), None).unwrap();
    let schema = reader.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        ["id", "n", "big", "f", "ts", "d", "by", "tx", "ai", "__op", "__position", "__commit_ts", "__unchanged"]
    );
    assert_eq!(format!("{:?}", schema.field(1).data_type()), "Decimal128(12, 2)");
    assert_eq!(format!("{:?}", schema.field(2).data_type()), "Decimal256(50, 5)");
    let total: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(total, 2);
    // Arrow's values, not only its schema: the same rows as Parquet.
    let arrow = read_arrow(&env.out("arrow"));
    assert_eq!(replay(&arrow["public.t"], &["id"]).unwrap(), rows);

    // The stream into both formats: an update, a numeric NaN (no decimal
    // can hold it: null, with a warning), a delete, then a column added
    // mid-stream, which starts a new file.
    c.batch_execute(
        "UPDATE t SET n = 99.99, tx = 'changed' WHERE id = 1; INSERT INTO t (id, n, big) VALUES (3, 'NaN', 'NaN'); \
         DELETE FROM t WHERE id = 2; ALTER TABLE t ADD COLUMN extra int; INSERT INTO t (id, extra) VALUES (4, 7);",
    )
    .await
    .unwrap();
    for format in ["parquet", "arrow"] {
        let r = catch_up(&env.dir.join(format!("col{format}.yaml"))).await;
        assert!(r.stderr.contains("NaN"), "{format}: no warning about the NaN:\n{}", r.stderr);
    }
    let pq = replay(&read_parquet(&env.out("parquet"))["public.t"], &["id"]).unwrap();
    let ar = replay(&read_arrow(&env.out("arrow"))["public.t"], &["id"]).unwrap();
    assert_eq!(pq, ar);
    assert_eq!((pq["\"1\""]["n"].as_str(), pq["\"1\""]["tx"].as_str()), (Some("99.99"), Some("changed")));
    assert_eq!((&pq["\"3\""]["n"], &pq["\"3\""]["big"]), (&Value::Null, &Value::Null));
    assert!(!pq.contains_key("\"2\""), "{pq:?}");
    assert_eq!(pq["\"4\""]["extra"], "7");
    for format in ["parquet", "arrow"] {
        let files = completed_files(&env.out(format).join("public.t"), format);
        let columns: Vec<usize> = files.iter().map(|f| column_count(f, format)).collect();
        assert!(columns.windows(2).all(|w| w[0] <= w[1]) && columns.last() > columns.first(), "{format}: {columns:?}");
    }
}

/// The number of columns of a Parquet or Arrow IPC file.
fn column_count(f: &std::path::Path, format: &str) -> usize {
    let file = std::fs::File::open(f).unwrap();
    if format == "arrow" {
        arrow_ipc::reader::FileReader::try_new(file, None).unwrap().schema().fields().len()
    } else {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        ParquetRecordBatchReaderBuilder::try_new(file).unwrap().schema().fields().len()
    }
}
