//! Row filter expressions.
//!
//! A `where:` is parsed once with `sqlparser` (Postgres dialect, whatever
//! the source), then compiled against each table schema it applies to:
//! column names are resolved to indices, types are checked, and string
//! literals compared with typed columns are converted once (`created_at >=
//! '2024-01-01'`). Evaluation follows SQL's three-valued logic on our typed
//! values; a row is kept only when the expression is TRUE.
//!
//! Invariants:
//! - Every problem that can be found without data (syntax, unknown
//!   columns, type errors, unsupported syntax) is found at compile time and
//!   reported with the expression and the line:column in it.
//! - Evaluation never panics and does no I/O. Errors that only data can
//!   cause (division by zero, overflow, a bad cast) make the expression
//!   NULL, so the row does not match; they are logged.
//! - Text comparisons are by code point (Postgres `COLLATE "C"`); the
//!   pushed-down form says so explicitly, so both paths agree.

mod compile;
mod eval;
mod parse;
mod render;
mod types;

use std::borrow::Cow;
use std::cmp::Ordering;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use sluice_core::schema::{quote_ident, quote_literal};
use sluice_core::{ColumnType, TableSchema, Value};
use sqlparser::ast::Spanned;
use sqlparser::ast::{
    self, BinaryOperator, CastKind, DataType, Expr as Ast, FunctionArg, FunctionArgExpr, FunctionArguments,
    TrimWhereField, UnaryOperator,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::text::text_form;
use sluice_core::datetime::{parse_date, parse_time, parse_timestamp};

pub use compile::{compile, Compiled, Tri};
pub use eval::{like, EvalError};
pub use parse::{parse, Parsed};
pub use types::{ExprType, ExprValue};

use compile::*;
use render::*;
use types::*;

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::testing;
    use sluice_core::Column;

    /// Type id 23 on every column; `id` is the key (and stays nullable).
    fn col(name: &str, ty: ColumnType) -> Column {
        Column { type_id: 23, key: name == "id", ..testing::col(name, ty) }
    }

    fn schema() -> TableSchema {
        testing::table(
            "shop",
            "orders",
            vec![
                col("id", ColumnType::Int64),
                col("status", ColumnType::Text),
                col("amount", ColumnType::Numeric { precision: Some(10), scale: Some(2) }),
                col("created", ColumnType::TimestampTz),
                col("Mixed Case", ColumnType::Int32),
                col("score", ColumnType::Float64),
                col("doc", ColumnType::Json),
            ],
        )
    }

    fn row(id: i64, status: Option<&str>, amount: &str, created: i64) -> Vec<Value> {
        vec![
            Value::Int(id),
            status.map(|s| Value::Text(s.into())).unwrap_or(Value::Null),
            Value::Numeric(amount.into()),
            Value::TimestampTz(created),
            Value::Int(7),
            Value::Float(f64::NAN),
            Value::Json("{}".into()),
        ]
    }

    fn t(expr: &str, r: &[Value]) -> Tri {
        let c = compile(&parse(expr).unwrap(), &schema()).unwrap_or_else(|e| panic!("{expr}: {e}"));
        c.test(r).unwrap()
    }

    fn err(expr: &str) -> String {
        match parse(expr) {
            Err(e) => e,
            Ok(p) => compile(&p, &schema()).expect_err(expr),
        }
    }

    #[test]
    fn comparisons_and_logic() {
        let r = row(1, Some("paid"), "150.00", 1_700_000_000_000_000);
        assert_eq!(t("status <> 'test' AND amount >= 100", &r), Tri::True);
        assert_eq!(t("status = 'test' OR amount < 100", &r), Tri::False);
        assert_eq!(t("amount BETWEEN 150 AND 150.00", &r), Tri::True);
        assert_eq!(t("amount NOT BETWEEN 1 AND 2", &r), Tri::True);
        assert_eq!(t("id IN (3, 2, 1)", &r), Tri::True);
        assert_eq!(t("id NOT IN (2, NULL)", &r), Tri::False, "NOT IN with a NULL is NULL");
        assert_eq!(t("status LIKE 'p_i%'", &r), Tri::True);
        assert_eq!(t("status ILIKE 'PA%'", &r), Tri::True);
        assert_eq!(t("upper(status) = 'PAID' AND length(status) = 4", &r), Tri::True);
        assert_eq!(t("created >= '2023-11-14 22:13:20+00'", &r), Tri::True);
        assert_eq!(t("created < '2023-11-14'::date", &r), Tri::False);
        assert_eq!(t("CAST(amount AS integer) * 2 = 300", &r), Tri::True);
        assert_eq!(t("amount::text = '150.00'", &r), Tri::True);
        assert_eq!(t("\"Mixed Case\" % 4 = 3", &r), Tri::True);
        assert_eq!(t("score > 1e308", &r), Tri::True, "NaN sorts above every number");
        assert_eq!(t("doc IS NOT NULL AND NOT (id = 2)", &r), Tri::True);
        assert_eq!(t("coalesce(status, 'x') || '!' = 'paid!'", &r), Tri::True);
        assert_eq!(t("TRIM('  a ') = 'a' AND ltrim(' a') = 'a'", &r), Tri::True);
        assert_eq!(t("true OR id / 0 = 1", &r), Tri::True, "short circuit skips the error");
    }

    #[test]
    fn three_valued_logic() {
        let r = row(1, None, "5", 0);
        assert_eq!(t("status = 'x'", &r), Tri::False);
        assert_eq!(t("NOT (status = 'x')", &r), Tri::False, "NOT NULL is NULL");
        assert_eq!(t("status = 'x' OR id = 1", &r), Tri::True);
        assert_eq!(t("status IS NULL", &r), Tri::True);
        assert_eq!(t("(status = 'x') IS NOT TRUE", &r), Tri::True);
        assert_eq!(t("status IS DISTINCT FROM 'x'", &r), Tri::True);
        let mut unsent = row(1, Some("a"), "5", 0);
        unsent[1] = Value::Unchanged;
        assert_eq!(t("status = 'a'", &unsent), Tri::Unknown);
        assert_eq!(t("id = 1", &unsent), Tri::True);
    }

    #[test]
    fn errors_point_at_the_problem() {
        assert!(err("nope = 1").contains("unknown column nope"), "{}", err("nope = 1"));
        assert!(err("nope = 1").contains("line 1, column 1"), "{}", err("nope = 1"));
        assert!(err("status = 1").contains("cannot compare text with integer"), "{}", err("status = 1"));
        assert!(err("created > 'banana'").contains("not a valid timestamptz"), "{}", err("created > 'banana'"));
        assert!(err("id +").contains("Expected"), "{}", err("id +"));
        assert!(err("id = 1 id").contains("after the expression"), "{}", err("id = 1 id"));
        assert!(err("frob(id) = 1").contains("unknown function frob"), "{}", err("frob(id) = 1"));
        assert!(err("amount").contains("expected a boolean"), "{}", err("amount"));
        assert!(err("doc = '{}'").contains("cannot be compared"), "{}", err("doc = '{}'"));
        assert!(err("id IN (SELECT 1)").contains("subquer"), "{}", err("id IN (SELECT 1)"));
        assert!(err("status = \"paid\"").contains("unknown column paid"), "{}", err("status = \"paid\""));
        let e = err("id = 1 AND\n  nope > 2");
        assert!(e.contains("line 2, column 3"), "{e}");
    }

    #[test]
    fn pushdown_forms() {
        let c = compile(&parse("status > 'm' AND amount >= 100").unwrap(), &schema()).unwrap();
        assert_eq!(
            c.pushdown.as_deref(),
            Some("((\"status\" COLLATE \"C\" > 'm' COLLATE \"C\") AND (\"amount\" >= '100'::numeric))")
        );
        assert_eq!(c.columns, vec![1, 2]);
        let c = compile(&parse("created::text LIKE '2024%'").unwrap(), &schema()).unwrap();
        assert_eq!(c.pushdown, None, "timestamptz output is not immutable");
        for not_pushed in
            ["id / 2 = 1", "id * 2 > 1", "lower(status) = 'a'", "status ILIKE 'a%'", "abs(id) = 1", "-id = 1"]
        {
            let c = compile(&parse(not_pushed).unwrap(), &schema()).unwrap();
            assert_eq!(c.pushdown, None, "{not_pushed}: could fail or differ in Postgres");
        }
        let c = compile(&parse("btrim(status) IN ('a', 'b') AND id BETWEEN -3 AND 7").unwrap(), &schema()).unwrap();
        assert!(c.pushdown.is_some());
    }

    #[test]
    fn column_reads_follow_sql() {
        let mut s = schema();
        s.columns[1].type_id = 1042; // character(n)
        s.columns[5].ty = ColumnType::Float32;
        let mut r = row(1, Some("ab   "), "1", 0);
        r[5] = Value::Float(0.1);
        let t = |e: &str| compile(&parse(e).unwrap(), &s).unwrap();
        assert_eq!(t("status = 'ab' AND length(status) = 2").test(&r).unwrap(), Tri::True);
        assert_eq!(t("score <= 0.1").test(&r).unwrap(), Tri::False, "real 0.1 widens above 0.1");
        assert_eq!(t("status = 'ab'").pushdown, None);
        assert_eq!(t("CAST(2.5 AS integer) = 3").test(&r).unwrap(), Tri::True, "half away from zero");
        assert!(err("status LIKE 'a\\'").contains("must not end with the escape character"));
        assert!(err("CAST(status AS varchar(3)) = 'a'").contains("not supported"));
        // Malformed text never panics.
        assert!(err("'\\xaéb'::bytea IS NULL").contains("not a valid bytea"));
        assert!(err("created > '2024-01-01 10:00+aéb'").contains("not a valid timestamptz"));
        assert!(err("created > '294277999-01-01'").contains("not a valid timestamptz"));
    }

    #[test]
    fn like_patterns() {
        assert!(like("abc", "a%c", Some('\\')));
        assert!(like("a%c", "a\\%c", Some('\\')));
        assert!(!like("abc", "a\\%c", Some('\\')));
        assert!(like("", "%", None));
        assert!(!like("ab", "_", None));
        assert!(like("mississippi", "%iss%pi", None));
        assert!(like("日本語", "_本_", None));
    }
}
