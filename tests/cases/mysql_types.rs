//! MySQL/MariaDB source: every type, edge values, through the snapshot and
//! through the binlog, replayed and compared with the source.

use crate::harness::*;

pub(crate) const TABLE: &str = "CREATE TABLE shop.types (
  id INT PRIMARY KEY,
  i8 TINYINT, u8 TINYINT UNSIGNED, i16 SMALLINT, u16 SMALLINT UNSIGNED, i24 MEDIUMINT, u24 MEDIUMINT UNSIGNED,
  i32 INT, u32 INT UNSIGNED, i64 BIGINT, u64 BIGINT UNSIGNED,
  dec1 DECIMAL(10,2), dec2 DECIMAL(65,30), dec3 DECIMAL(5,0),
  f FLOAT, d DOUBLE, bits BIT(10), bit1 BIT(1), flag BOOL,
  c CHAR(5), vc VARCHAR(300), tx TEXT, lat VARCHAR(20) CHARACTER SET latin1, latt TEXT CHARACTER SET latin1,
  bin BINARY(4), vbin VARBINARY(20), bl BLOB,
  dt DATE, tm TIME, tm6 TIME(6), dtm DATETIME, dtm3 DATETIME(3), dtm6 DATETIME(6), ts TIMESTAMP(6) NULL,
  yr YEAR, e ENUM('small','medium','large'), st SET('a','b','c','d'),
  j JSON, uu UUID, g GEOMETRY, pt POINT, tm2 TIME(2)
) DEFAULT CHARSET=utf8mb4";

/// Row values (without the id), each a SQL literal list in column order.
pub(crate) const ROWS: &[&str] = &[
    // maxima
    "127, 255, 32767, 65535, 8388607, 16777215, 2147483647, 4294967295, 9223372036854775807, 18446744073709551615, \
     99999999.99, 99999999999999999999999999999999999.999999999999999999999999999999, 99999, \
     3.4e38, 1.7976931348623157e308, b'1111111111', b'1', TRUE, \
     'abcde', 'x😀y', REPEAT('long text ', 40), 'café ÿ€', 'Ærø', \
     0xdeadbeef, 0x00ff00, 0x0102030405, \
     '9999-12-31', '838:59:59', '838:59:59.000000', '9999-12-31 23:59:59', '9999-12-31 23:59:59.999', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999999', \
     2155, 'large', 'a,b,c,d', '{\"k\": [1, 2.5, \"s\", null, true], \"n\": {\"x\": -1}}', 'ffffffff-ffff-ffff-ffff-ffffffffffff', \
     ST_GeomFromText('POLYGON((0 0,1 0,1 1,0 0))'), POINT(-1.5, 2.25), '838:59:59.99'",
    // minima and negatives
    "-128, 0, -32768, 0, -8388608, 0, -2147483648, 0, -9223372036854775808, 0, \
     -99999999.99, -0.000000000000000000000000000001, -99999, \
     -3.4e38, -2.2250738585072014e-308, b'0', b'0', FALSE, \
     '', '', '', '', '', \
     0x00000000, '', '', \
     '1000-01-01', '-838:59:59', '-838:59:59.000001', '1000-01-01 00:00:00', '1000-01-01 00:00:00.001', '1000-01-01 00:00:00.000001', '1970-01-01 00:00:01', \
     1901, 'small', '', '[]', '00000000-0000-0000-0000-000000000000', \
     ST_GeomFromText('LINESTRING(0 0,1 1)'), POINT(0, 0), '-838:59:59.99'",
    // ordinary values, fractions, odd dates
    "-1, 1, -300, 300, -70000, 70000, -1, 1, -1, 1, \
     -12.50, 3.141592653589793238462643383279, 0, \
     1.1, 0.1, b'0000000001', b'1', 2, \
     'a', 'tab\there\nnewline \"quoted\" \\\\ backslash', 'multi\nline', 'naïve', 'Größe', \
     0x00000001, 0x00, '', \
     '2024-02-29', '-00:00:01', '12:34:56.5', '2024-02-29 12:34:56', '2024-02-29 12:34:56.5', '2024-02-29 12:34:56.000001', '2024-02-29 12:34:56.123456', \
     0, 'medium', 'b,d', '\"just a string\"', '123e4567-e89b-12d3-a456-426614174000', \
     ST_GeomFromText('MULTIPOINT(1 1,2 2)'), POINT(1e10, -1e-10), '-00:00:00.01'",
    // NULL everywhere
    "NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL",
    // zero dates (documented as NULL)
    "0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b'0', b'0', 0, 'z', 'z', 'z', 'z', 'z', 0x00, 0x00, 0x00, \
     '0000-00-00', '00:00:00', '00:00:00', '0000-00-00 00:00:00', '0000-00-00 00:00:00', '0000-00-00 00:00:00', '0000-00-00 00:00:00', \
     0, 'small', 'a', '{}', NULL, NULL, NULL, '-00:00:01.5'",
];

/// Insert `ROWS` with ids `base + 1 ..` (zero dates allowed).
pub(crate) fn insert_rows(env: &MyEnv, base: usize) {
    let mut sql = String::from("SET SESSION sql_mode = ''; ");
    for (i, r) in ROWS.iter().enumerate() {
        sql.push_str(&format!("INSERT INTO shop.types VALUES ({}, {r});\n", base + i + 1));
    }
    env.sql(&sql);
}

fn trim_frac(col: &str) -> String {
    format!("IF(LOCATE('.', CAST({col} AS CHAR)) > 0, TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM CAST({col} AS CHAR))), CAST({col} AS CHAR))")
}

fn b64(col: &str) -> String {
    format!("REPLACE(TO_BASE64({col}), '\\n', '')")
}

/// The source rows in Sluice's JSON encoding.
fn expected_sql() -> String {
    let date = |c: &str| format!("IF(MONTH({c}) = 0 OR DAYOFMONTH({c}) = 0, NULL, DATE_FORMAT({c}, '%Y-%m-%d'))");
    let dtm = |c: &str, z: &str| {
        format!("IF(MONTH({c}) = 0 OR DAYOFMONTH({c}) = 0, NULL, CONCAT(REPLACE({}, ' ', 'T'), '{z}'))", trim_frac(c))
    };
    let cols: Vec<(String, String)> = vec![
        ("id".into(), "id".into()),
        ("i8".into(), "i8".into()),
        ("u8".into(), "u8".into()),
        ("i16".into(), "i16".into()),
        ("u16".into(), "u16".into()),
        ("i24".into(), "i24".into()),
        ("u24".into(), "u24".into()),
        ("i32".into(), "i32".into()),
        ("u32".into(), "u32".into()),
        ("i64".into(), "i64".into()),
        ("u64".into(), "u64".into()),
        ("dec1".into(), "CAST(dec1 AS CHAR)".into()),
        ("dec2".into(), "CAST(dec2 AS CHAR)".into()),
        ("dec3".into(), "CAST(dec3 AS CHAR)".into()),
        ("f".into(), "CAST(f AS CHAR)".into()),
        ("d".into(), "d".into()),
        ("bits".into(), "LPAD(BIN(bits), 10, '0')".into()),
        ("bit1".into(), "BIN(bit1)".into()),
        ("flag".into(), "flag".into()),
        ("c".into(), "c".into()),
        ("vc".into(), "vc".into()),
        ("tx".into(), "tx".into()),
        ("lat".into(), "lat".into()),
        ("latt".into(), "latt".into()),
        ("bin".into(), b64("bin")),
        ("vbin".into(), b64("vbin")),
        ("bl".into(), b64("bl")),
        ("dt".into(), date("dt")),
        ("tm".into(), trim_frac("tm")),
        ("tm6".into(), trim_frac("tm6")),
        ("dtm".into(), dtm("dtm", "")),
        ("dtm3".into(), dtm("dtm3", "")),
        ("dtm6".into(), dtm("dtm6", "")),
        ("ts".into(), format!("IF(UNIX_TIMESTAMP(ts) = 0, NULL, CONCAT(REPLACE({}, ' ', 'T'), 'Z'))", trim_frac("ts"))),
        ("yr".into(), "yr + 0".into()),
        ("e".into(), "e".into()),
        ("st".into(), "st".into()),
        ("j".into(), "JSON_EXTRACT(j, '$')".into()),
        ("uu".into(), "CAST(uu AS CHAR)".into()),
        ("g".into(), b64("ST_AsWKB(g)")),
        ("pt".into(), b64("ST_AsWKB(pt)")),
        ("tm2".into(), trim_frac("tm2")),
    ];
    let body = cols.iter().map(|(k, e)| format!("'{k}', {e}")).collect::<Vec<_>>().join(", ");
    format!("SELECT JSON_OBJECT({body}) FROM shop.types ORDER BY id")
}

/// FLOAT columns come back from the server as text; compare as numbers.
fn normalize(rows: &mut std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>>) {
    for r in rows.values_mut() {
        if let Some(serde_json::Value::String(s)) = r.get("f") {
            let f: f64 = s.parse().unwrap();
            r.insert("f".into(), serde_json::json!(f));
        }
        // `d` DOUBLE: JSON numbers parse to the same f64 either way.
        if let Some(v) = r.get("d").and_then(|v| v.as_f64()) {
            r.insert("d".into(), serde_json::json!(v));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_types_snapshot_and_stream() {
    let env = MyEnv::new("mytypes");
    env.sql("CREATE DATABASE shop CHARACTER SET utf8mb4");
    env.sql(TABLE);
    let insert = |base: usize| insert_rows(&env, base);
    insert(0);
    let p = env.pipeline("mytypes", &["shop.*"], &env.files_sink("mytypes", "jsonl"), "");
    catch_up(&p).await;
    // The same rows into Parquet: every MySQL type has an Arrow column.
    let pq = env.pipeline("mytypespq", &["shop.*"], &env.files_sink("mytypespq", "parquet"), "");
    catch_up(&pq).await;
    let out = read_jsonl(&env.out("mytypes"));
    let evs = &out["shop.types"];
    assert_eq!(evs.len(), ROWS.len());
    assert!(evs.iter().all(|e| e.op == "r"));
    let mut want = env.rows(&expected_sql(), &["id"]);
    normalize(&mut want);
    let mut got = replay(evs, &["id"]).unwrap();
    normalize(&mut got);
    assert_same("shop.types (snapshot)", &got, &want);

    // The same values through the binlog, then updates (every column changes)
    // and deletes.
    insert(100);
    env.sql(
        "SET SESSION sql_mode = ''; \
         UPDATE shop.types SET i8 = -5, u64 = 42, dec2 = -1.5, f = 2.5, bits = b'11', vc = 'changed 😀', lat = 'é', \
           bin = 0x0a, tm6 = '-01:02:03.4', dtm6 = '2000-01-01 00:00:00.5', ts = '2001-02-03 04:05:06', e = NULL, \
           st = 'c', j = '{\"u\": 1}', uu = 'aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee', g = POINT(7, 8) \
         WHERE id IN (101, 102, 104); \
         DELETE FROM shop.types WHERE id IN (2, 105);",
    );
    catch_up(&p).await;
    catch_up(&pq).await;
    let pout = read_parquet(&env.out("mytypespq"));
    let prows = replay(&pout["shop.types"], &["id"]).unwrap();
    let ids: Vec<&String> = prows.keys().collect();
    let want_ids = env.rows("SELECT JSON_OBJECT('id', CAST(id AS CHAR)) FROM shop.types", &["id"]);
    assert_eq!(ids, want_ids.keys().collect::<Vec<_>>(), "parquet rows");
    let row1 = &prows["\"1\""];
    assert_eq!(row1["u64"], "18446744073709551615");
    assert_eq!(row1["dec1"], "99999999.99");
    assert_eq!(row1["vc"], "x😀y");
    assert_eq!(row1["dt"], "9999-12-31");
    let out = read_jsonl(&env.out("mytypes"));
    let evs = &out["shop.types"];
    let stream: Vec<&Event> = evs.iter().filter(|e| e.op != "r").collect();
    assert_eq!(stream.iter().filter(|e| e.op == "c").count(), ROWS.len());
    assert_eq!(stream.iter().filter(|e| e.op == "u").count(), 3);
    assert_eq!(stream.iter().filter(|e| e.op == "d").count(), 2);
    let mut want = env.rows(&expected_sql(), &["id"]);
    normalize(&mut want);
    let mut got = replay(evs, &["id"]).unwrap();
    normalize(&mut got);
    assert_same("shop.types (stream)", &got, &want);

    // The source block of a binlog event.
    let ev = stream.iter().find(|e| e.op == "u").unwrap();
    let src = &ev.raw["source"];
    assert_eq!(src["connector"], "mysql");
    assert_eq!(src["db"], "shop");
    assert_eq!(src["table"], "types");
    assert_eq!(src["server_id"], 1);
    assert!(src["gtid"].as_str().unwrap().starts_with("0-1-"), "{src}");
    assert!(src["file"].as_str().unwrap().starts_with("binlog."), "{src}");
    assert!(src["pos"].as_u64().unwrap() > 4);
    assert_eq!(src["snapshot"], "false");
    // One UPDATE statement changed three rows: one rows event, rows 0..=2.
    let mut rows: Vec<u64> =
        stream.iter().filter(|e| e.op == "u").map(|e| e.raw["source"]["row"].as_u64().unwrap()).collect();
    rows.sort();
    assert_eq!(rows, vec![0, 1, 2]);
    assert!(ev.raw.get("schema").is_none() || ev.raw["source"]["db"] == "shop");
}
