//! The compiled expression in Postgres syntax, for a publication row filter.

use super::*;

/// The expression in Postgres syntax, with every constant typed and every
/// text ordering under `COLLATE "C"` (Sluice compares code points).
pub(super) fn render(n: &Node, schema: &TableSchema) -> String {
    let r = |x: &Node| render(x, schema);
    match n {
        Node::Col(i, _) => quote_ident(&schema.columns[*i].name),
        Node::Const(v) => match v {
            ExprValue::Null => "NULL".into(),
            ExprValue::Bool(b) => (if *b { "true" } else { "false" }).into(),
            ExprValue::Int(i) => format!("({i})::bigint"),
            ExprValue::Num(d) => format!("{}::numeric", quote_literal(&d.to_string())),
            ExprValue::Float(f) => {
                let mut s = String::new();
                crate::text::float_text(*f, &mut s);
                format!("{}::float8", quote_literal(&s))
            }
            ExprValue::Text(t) => quote_literal(t),
            ExprValue::Bytes(_) | ExprValue::Date(_) | ExprValue::Time(_) | ExprValue::Ts(_) | ExprValue::TsTz(_) => {
                let ty = match v {
                    ExprValue::Bytes(_) => "bytea",
                    ExprValue::Date(_) => "date",
                    ExprValue::Time(_) => "time",
                    ExprValue::Ts(_) => "timestamp",
                    _ => "timestamptz",
                };
                format!("{}::{ty}", quote_literal(&v.text().unwrap_or_default()))
            }
        },
        Node::Not(x) => format!("(NOT {})", r(x)),
        Node::And(a, b) => format!("({} AND {})", r(a), r(b)),
        Node::Or(a, b) => format!("({} OR {})", r(a), r(b)),
        Node::Cmp(op, a, b, ty) => {
            let c = if *ty == ExprType::Text && !matches!(op, CmpOp::Eq | CmpOp::Ne) { " COLLATE \"C\"" } else { "" };
            format!("({}{c} {} {}{c})", r(a), op.sql(), r(b))
        }
        Node::IsNull(x, neg) => format!("({} IS {}NULL)", r(x), if *neg { "NOT " } else { "" }),
        Node::IsBool(x, want, neg) => {
            format!("({} IS {}{})", r(x), if *neg { "NOT " } else { "" }, if *want { "TRUE" } else { "FALSE" })
        }
        Node::Distinct(a, b, neg) => format!("({} IS {}DISTINCT FROM {})", r(a), if *neg { "NOT " } else { "" }, r(b)),
        Node::In(x, items, neg) => {
            let list: Vec<String> = items.iter().map(r).collect();
            format!("({} {}IN ({}))", r(x), if *neg { "NOT " } else { "" }, list.join(", "))
        }
        Node::Like { expr, pattern, escape, ci, negated } => format!(
            "({} {}{} {} ESCAPE {})",
            r(expr),
            if *negated { "NOT " } else { "" },
            if *ci { "ILIKE" } else { "LIKE" },
            r(pattern),
            quote_literal(&escape.map(String::from).unwrap_or_default())
        ),
        Node::Arith(op, a, b, _) => {
            let o = match op {
                ArOp::Add => "+",
                ArOp::Sub => "-",
                ArOp::Mul => "*",
                ArOp::Div => "/",
                ArOp::Mod => "%",
            };
            format!("({} {o} {})", r(a), r(b))
        }
        Node::Neg(x) => format!("(- {})", r(x)),
        Node::Concat(a, b) => format!("({} || {})", r(a), r(b)),
        Node::Func(f, x) => match f {
            Func::Lower => format!("lower({})", r(x)),
            Func::Upper => format!("upper({})", r(x)),
            Func::Length => format!("(char_length({}))::bigint", r(x)),
            Func::Abs => format!("abs({})", r(x)),
            Func::Trim(TrimSide::Both) => format!("btrim({})", r(x)),
            Func::Trim(TrimSide::Leading) => format!("ltrim({})", r(x)),
            Func::Trim(TrimSide::Trailing) => format!("rtrim({})", r(x)),
        },
        Node::Coalesce(items) => format!("COALESCE({})", items.iter().map(r).collect::<Vec<_>>().join(", ")),
        Node::Cast(x, _, to) => format!("({})::{}", r(x), to.pg()),
    }
}
