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

use crate::text::{parse_date, parse_time, parse_timestamp, text_form};

/// A parsed `where:` expression, not yet bound to a table.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub text: String,
    ast: Ast,
}

/// Parse `text` as one SQL expression.
pub fn parse(text: &str) -> Result<Parsed, String> {
    let dialect = PostgreSqlDialect {};
    let mut p = Parser::new(&dialect).try_with_sql(text).map_err(|e| format!("{e}"))?;
    let ast = p.parse_expr().map_err(|e| format!("{e}"))?;
    let rest = p.peek_token();
    if rest.token != sqlparser::tokenizer::Token::EOF {
        return Err(format!(
            "unexpected {} after the expression at line {}, column {}",
            rest.token, rest.span.start.line, rest.span.start.column
        ));
    }
    Ok(Parsed { text: text.to_string(), ast })
}

/// The logical type of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Bool,
    Int,
    Float,
    Num,
    Text,
    Bytes,
    Date,
    Time,
    Ts,
    TsTz,
    Uuid,
    /// JSON documents: only `IS [NOT] NULL` and casts to text.
    Json,
    /// Arrays and other values without comparisons: only `IS [NOT] NULL` and casts to text.
    Opaque,
    /// The NULL literal (takes the other operand's type).
    Null,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Bool => "boolean",
            Ty::Int => "integer",
            Ty::Float => "double precision",
            Ty::Num => "numeric",
            Ty::Text => "text",
            Ty::Bytes => "bytea",
            Ty::Date => "date",
            Ty::Time => "time",
            Ty::Ts => "timestamp",
            Ty::TsTz => "timestamptz",
            Ty::Uuid => "uuid",
            Ty::Json => "json",
            Ty::Opaque => "array/other",
            Ty::Null => "null",
        }
    }
    fn numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::Float | Ty::Num)
    }
    fn of(c: &ColumnType) -> Ty {
        match c {
            ColumnType::Bool => Ty::Bool,
            ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 | ColumnType::UInt32 => Ty::Int,
            ColumnType::UInt64 | ColumnType::Numeric { .. } => Ty::Num,
            ColumnType::Float32 | ColumnType::Float64 => Ty::Float,
            ColumnType::Text | ColumnType::Other => Ty::Text,
            ColumnType::Bytes => Ty::Bytes,
            ColumnType::Date => Ty::Date,
            ColumnType::Time => Ty::Time,
            ColumnType::Timestamp => Ty::Ts,
            ColumnType::TimestampTz => Ty::TsTz,
            ColumnType::Uuid => Ty::Uuid,
            ColumnType::Json => Ty::Json,
            ColumnType::Array(_) => Ty::Opaque,
        }
    }
    fn pg(self) -> &'static str {
        match self {
            Ty::Bool => "boolean",
            Ty::Int => "bigint",
            Ty::Float => "float8",
            Ty::Num => "numeric",
            Ty::Text | Ty::Opaque | Ty::Null => "text",
            Ty::Bytes => "bytea",
            Ty::Date => "date",
            Ty::Time => "time",
            Ty::Ts => "timestamp",
            Ty::TsTz => "timestamptz",
            Ty::Uuid => "uuid",
            Ty::Json => "jsonb",
        }
    }
}

/// An evaluated value.
#[derive(Debug, Clone, PartialEq)]
pub enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Num(Decimal),
    Text(Cow<'a, str>),
    Bytes(Cow<'a, [u8]>),
    Date(i32),
    Time(i64),
    Ts(i64),
    TsTz(i64),
}

impl V<'_> {
    fn into_owned(self) -> V<'static> {
        match self {
            V::Text(t) => V::Text(Cow::Owned(t.into_owned())),
            V::Bytes(b) => V::Bytes(Cow::Owned(b.into_owned())),
            V::Null => V::Null,
            V::Bool(b) => V::Bool(b),
            V::Int(i) => V::Int(i),
            V::Float(f) => V::Float(f),
            V::Num(n) => V::Num(n),
            V::Date(d) => V::Date(d),
            V::Time(t) => V::Time(t),
            V::Ts(t) => V::Ts(t),
            V::TsTz(t) => V::TsTz(t),
        }
    }
    fn as_f64(&self) -> Option<f64> {
        match self {
            V::Int(i) => Some(*i as f64),
            V::Float(f) => Some(*f),
            V::Num(n) => n.to_f64(),
            _ => None,
        }
    }
    fn as_dec(&self) -> Option<Decimal> {
        match self {
            V::Int(i) => Some(Decimal::from(*i)),
            V::Num(n) => Some(*n),
            _ => None,
        }
    }
    fn text(&self) -> Option<String> {
        Some(match self {
            V::Null => return None,
            V::Bool(b) => (if *b { "true" } else { "false" }).to_string(),
            V::Int(i) => i.to_string(),
            V::Float(f) => {
                let mut s = String::new();
                crate::text::float_text(*f, &mut s);
                s
            }
            V::Num(n) => n.to_string(),
            V::Text(t) => t.to_string(),
            V::Bytes(b) => text_form(&Value::Bytes(b.to_vec()))?,
            V::Date(d) => text_form(&Value::Date(*d))?,
            V::Time(t) => text_form(&Value::Time(*t))?,
            V::Ts(t) => text_form(&Value::Timestamp(*t))?,
            V::TsTz(t) => text_form(&Value::TimestampTz(*t))?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
    fn holds(self, o: Ordering) -> bool {
        match self {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Lower,
    Upper,
    Length,
    Abs,
    Trim(TrimSide),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrimSide {
    Both,
    Leading,
    Trailing,
}

/// How a column's value is read for SQL semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    AsIs,
    /// `character(n)`: trailing blanks are insignificant.
    TrimBlanks,
    /// `real`: widened from single precision, as Postgres compares it.
    Float32,
}

#[derive(Debug, Clone)]
enum Node {
    Col(usize, Read),
    Const(V<'static>),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>, Ty),
    IsNull(Box<Node>, bool),
    /// `x IS [NOT] TRUE/FALSE`: (value, wanted, negated).
    IsBool(Box<Node>, bool, bool),
    Distinct(Box<Node>, Box<Node>, bool),
    In(Box<Node>, Vec<Node>, bool),
    Like {
        expr: Box<Node>,
        pattern: Box<Node>,
        escape: Option<char>,
        ci: bool,
        negated: bool,
    },
    Arith(ArOp, Box<Node>, Box<Node>, Ty),
    Neg(Box<Node>),
    Concat(Box<Node>, Box<Node>),
    Func(Func, Box<Node>),
    Coalesce(Vec<Node>),
    Cast(Box<Node>, Ty, Ty),
}

/// A typed sub-expression during compilation.
struct Typed {
    node: Node,
    ty: Ty,
    /// A string literal not yet given a type (SQL's "unknown" literals).
    untyped: bool,
    /// Something Postgres may not accept in a publication row filter.
    pushable: bool,
}

impl Typed {
    fn new(node: Node, ty: Ty) -> Typed {
        Typed { node, ty, untyped: false, pushable: true }
    }
}

/// An expression bound to one table.
#[derive(Debug, Clone)]
pub struct Compiled {
    text: String,
    root: Node,
    /// Indices of the columns the expression reads.
    pub columns: Vec<usize>,
    /// Their names.
    pub column_names: Vec<String>,
    /// The expression in Postgres syntax for a publication's row filter,
    /// when Postgres can evaluate it exactly as Sluice does.
    pub pushdown: Option<String>,
}

/// Outcome of testing a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tri {
    True,
    /// FALSE or NULL.
    False,
    /// The row lacks a value the expression reads (not sent by the source).
    Unknown,
}

struct Ctx<'a> {
    schema: &'a TableSchema,
    columns: Vec<usize>,
}

impl Ctx<'_> {
    fn err(&self, node: &dyn Spanned, msg: impl std::fmt::Display) -> String {
        self.err_at(node.span(), msg)
    }

    fn err_at(&self, s: sqlparser::tokenizer::Span, msg: impl std::fmt::Display) -> String {
        if s.start.line == 0 {
            format!("{msg}")
        } else {
            format!("{msg} (at line {}, column {})", s.start.line, s.start.column)
        }
    }
}

/// Bind `parsed` to `schema`: resolve columns, check types, fold literals.
pub fn compile(parsed: &Parsed, schema: &TableSchema) -> Result<Compiled, String> {
    let mut cx = Ctx { schema, columns: Vec::new() };
    let t = cx.expr(&parsed.ast)?;
    let t = cx.to_bool(t, &parsed.ast)?;
    let mut columns = cx.columns;
    columns.sort_unstable();
    columns.dedup();
    let pushdown = if t.pushable { Some(render(&t.node, schema)) } else { None };
    let column_names = columns.iter().map(|&i| schema.columns[i].name.clone()).collect();
    Ok(Compiled { text: parsed.text.clone(), root: t.node, columns, column_names, pushdown })
}

impl Ctx<'_> {
    fn to_bool(&self, t: Typed, at: &Ast) -> Result<Typed, String> {
        match t.ty {
            Ty::Bool | Ty::Null => Ok(t),
            _ if t.untyped => {
                let b = match &t.node {
                    Node::Const(V::Text(s)) => {
                        parse_bool(s).ok_or_else(|| self.err(at, format!("{s:?} is not a boolean")))?
                    }
                    _ => return Err(self.err(at, "expected a boolean condition")),
                };
                Ok(Typed::new(Node::Const(V::Bool(b)), Ty::Bool))
            }
            other => Err(self.err(at, format!("expected a boolean condition, found a value of type {}", other.name()))),
        }
    }

    fn column(&mut self, ident: &ast::Ident) -> Result<Typed, String> {
        let cols = &self.schema.columns;
        let idx = cols.iter().position(|c| c.name == ident.value).or_else(|| {
            if ident.quote_style.is_some() {
                return None;
            }
            let matches: Vec<usize> = cols
                .iter()
                .enumerate()
                .filter(|(_, c)| c.name.eq_ignore_ascii_case(&ident.value))
                .map(|(i, _)| i)
                .collect();
            (matches.len() == 1).then(|| matches[0])
        });
        let Some(i) = idx else {
            let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
            return Err(self.err_at(
                ident.span,
                format!(
                    "unknown column {} in table {} (its columns: {})",
                    ident.value,
                    self.schema.id,
                    names.join(", ")
                ),
            ));
        };
        self.columns.push(i);
        let c = &cols[i];
        let st = c.source_type.to_ascii_lowercase();
        let pg = c.type_id != 0;
        let read = if (pg && (c.type_id == 1042 || st.starts_with("character("))) || st == "bpchar" {
            Read::TrimBlanks
        } else if (pg && c.type_id == 700) || (c.ty == ColumnType::Float32) {
            Read::Float32
        } else {
            Read::AsIs
        };
        // Postgres accepts only built-in types in publication row filters,
        // and bpchar/real need the adjustments above, which a pushed filter
        // would not share exactly: only plain built-in columns are pushed.
        let pushable = pg
            && c.type_id < 16384
            && read == Read::AsIs
            && !matches!(c.ty, ColumnType::Other | ColumnType::Array(_) | ColumnType::Json);
        let ty = Ty::of(&c.ty);
        Ok(Typed { node: Node::Col(i, read), ty, untyped: false, pushable })
    }

    fn expr(&mut self, e: &Ast) -> Result<Typed, String> {
        match e {
            Ast::Identifier(id) => self.column(id),
            Ast::CompoundIdentifier(parts) => Err(self.err(
                e,
                format!("qualified names ({}) are not supported; write the column name alone", join_idents(parts)),
            )),
            Ast::Nested(inner) => self.expr(inner),
            Ast::Value(v) => self.literal(&v.value, e),
            Ast::TypedString(ts) => {
                let Some(s) = ts.value.value.clone().into_string() else {
                    return Err(self.err(e, "unsupported typed literal"));
                };
                let to = self.data_type(&ts.data_type, e)?;
                let lit =
                    Typed { node: Node::Const(V::Text(Cow::Owned(s))), ty: Ty::Text, untyped: true, pushable: true };
                self.coerce(lit, to, e)
            }
            Ast::UnaryOp { op, expr } => {
                let t = self.expr(expr)?;
                match op {
                    UnaryOperator::Not => {
                        let t = self.to_bool(t, expr)?;
                        Ok(Typed {
                            node: Node::Not(Box::new(t.node)),
                            ty: Ty::Bool,
                            untyped: false,
                            pushable: t.pushable,
                        })
                    }
                    UnaryOperator::Minus | UnaryOperator::Plus => {
                        if !t.ty.numeric() && t.ty != Ty::Null {
                            return Err(self.err(e, format!("unary {op} needs a number, found {}", t.ty.name())));
                        }
                        if *op == UnaryOperator::Plus {
                            return Ok(t);
                        }
                        let (node, pushable) = match t.node {
                            Node::Const(V::Int(i)) if i != i64::MIN => (Node::Const(V::Int(-i)), t.pushable),
                            Node::Const(V::Num(n)) => (Node::Const(V::Num(-n)), t.pushable),
                            Node::Const(V::Float(f)) => (Node::Const(V::Float(-f)), t.pushable),
                            n => (Node::Neg(Box::new(n)), false),
                        };
                        Ok(Typed { node, ty: t.ty, untyped: false, pushable })
                    }
                    other => Err(self.err(e, format!("the operator {other} is not supported in filters"))),
                }
            }
            Ast::BinaryOp { left, op, right } => self.binary(e, left, op, right),
            Ast::IsNull(x) | Ast::IsNotNull(x) => {
                let t = self.expr(x)?;
                let neg = matches!(e, Ast::IsNotNull(_));
                Ok(Typed {
                    node: Node::IsNull(Box::new(t.node), neg),
                    ty: Ty::Bool,
                    untyped: false,
                    pushable: t.pushable,
                })
            }
            Ast::IsTrue(x) | Ast::IsNotTrue(x) | Ast::IsFalse(x) | Ast::IsNotFalse(x) => {
                let t = self.expr(x)?;
                let t = self.to_bool(t, x)?;
                let want = matches!(e, Ast::IsTrue(_) | Ast::IsNotTrue(_));
                let neg = matches!(e, Ast::IsNotTrue(_) | Ast::IsNotFalse(_));
                Ok(Typed {
                    node: Node::IsBool(Box::new(t.node), want, neg),
                    ty: Ty::Bool,
                    untyped: false,
                    pushable: t.pushable,
                })
            }
            Ast::IsDistinctFrom(a, b) | Ast::IsNotDistinctFrom(a, b) => {
                let (l, r, _, pushable) = self.comparable(e, a, b)?;
                let neg = matches!(e, Ast::IsNotDistinctFrom(..));
                Ok(Typed {
                    node: Node::Distinct(Box::new(l), Box::new(r), neg),
                    ty: Ty::Bool,
                    untyped: false,
                    pushable,
                })
            }
            Ast::In { expr, target, negated, .. } => {
                let ast::InTarget::List(list) = target else {
                    return Err(self.err(e, "IN takes a list of values here, not a subquery"));
                };
                let mut x = self.expr(expr)?;
                let mut items = Vec::with_capacity(list.len());
                let mut pushable = x.pushable;
                // The list takes the type of the tested value.
                let mut ty = x.ty;
                for item in list {
                    let it = self.expr(item)?;
                    ty = self.unify_types(ty, &it, item)?;
                }
                if x.untyped && ty != Ty::Text {
                    x = self.coerce(x, ty, expr)?;
                }
                for item in list {
                    let it = self.expr(item)?;
                    let it = self.coerce(it, ty, item)?;
                    pushable &= it.pushable;
                    items.push(it.node);
                }
                self.check_comparable(ty, e)?;
                let x = self.coerce(x, ty, expr)?;
                Ok(Typed { node: Node::In(Box::new(x.node), items, *negated), ty: Ty::Bool, untyped: false, pushable })
            }
            Ast::Between { expr, negated, low, high } => {
                let (x1, lo, ty1, p1) = self.comparable(e, expr, low)?;
                let (x2, hi, ty2, p2) = self.comparable(e, expr, high)?;
                let ge = Node::Cmp(CmpOp::Ge, Box::new(x1), Box::new(lo), ty1);
                let le = Node::Cmp(CmpOp::Le, Box::new(x2), Box::new(hi), ty2);
                let both = Node::And(Box::new(ge), Box::new(le));
                let node = if *negated { Node::Not(Box::new(both)) } else { both };
                Ok(Typed { node, ty: Ty::Bool, untyped: false, pushable: p1 && p2 })
            }
            Ast::Like { negated, any, expr, pattern, escape_char }
            | Ast::ILike { negated, any, expr, pattern, escape_char } => {
                if *any {
                    return Err(self.err(e, "LIKE ANY is not supported"));
                }
                let x = self.text_operand(expr)?;
                let p = self.text_operand(pattern)?;
                let escape = match escape_char.as_deref() {
                    None => Some('\\'),
                    Some(Ast::Value(v)) => match &v.value {
                        ast::Value::SingleQuotedString(s) if s.chars().count() <= 1 => s.chars().next(),
                        _ => return Err(self.err(e, "ESCAPE takes a one-character string")),
                    },
                    Some(other) => return Err(self.err(other, "ESCAPE takes a one-character string")),
                };
                let ci = matches!(e, Ast::ILike { .. });
                if let (Node::Const(V::Text(pat)), Some(esc)) = (&p.node, escape) {
                    let mut escaped = false;
                    for c in pat.chars() {
                        escaped = !escaped && c == esc;
                    }
                    if escaped {
                        return Err(self.err(
                            pattern.as_ref(),
                            format!("LIKE pattern {pat:?} must not end with the escape character"),
                        ));
                    }
                }
                let pushable = x.pushable && !ci && matches!(p.node, Node::Const(_));
                Ok(Typed {
                    node: Node::Like {
                        expr: Box::new(x.node),
                        pattern: Box::new(p.node),
                        escape,
                        ci,
                        negated: *negated,
                    },
                    ty: Ty::Bool,
                    untyped: false,
                    pushable,
                })
            }
            Ast::Cast { kind, expr, data_type, format } => {
                if format.is_some() || matches!(kind, CastKind::TryCast | CastKind::SafeCast) {
                    return Err(self.err(e, "only CAST(x AS type) and x::type are supported"));
                }
                let to = self.data_type(data_type, e)?;
                let t = self.expr(expr)?;
                self.coerce(t, to, e)
            }
            Ast::Function(f) => self.function(e, f),
            Ast::Trim { trim_where, trim_what, expr, trim_characters } => {
                if trim_what.is_some() || trim_characters.is_some() {
                    return Err(self.err(e, "TRIM of characters other than spaces is not supported"));
                }
                let side = match trim_where {
                    None | Some(TrimWhereField::Both) => TrimSide::Both,
                    Some(TrimWhereField::Leading) => TrimSide::Leading,
                    Some(TrimWhereField::Trailing) => TrimSide::Trailing,
                };
                let x = self.text_operand(expr)?;
                Ok(Typed {
                    node: Node::Func(Func::Trim(side), Box::new(x.node)),
                    ty: Ty::Text,
                    untyped: false,
                    pushable: x.pushable,
                })
            }
            Ast::Subquery(_) | Ast::Exists { .. } => Err(self.err(e, "subqueries are not supported in filters")),
            other => Err(self.err(other, format!("unsupported syntax in a filter: {other}"))),
        }
    }

    fn literal(&self, v: &ast::Value, at: &Ast) -> Result<Typed, String> {
        Ok(match v {
            ast::Value::Null => Typed::new(Node::Const(V::Null), Ty::Null),
            ast::Value::Boolean(b) => Typed::new(Node::Const(V::Bool(*b)), Ty::Bool),
            ast::Value::Number(n, _) => {
                let s = n.to_string();
                if let Ok(i) = s.parse::<i64>() {
                    Typed::new(Node::Const(V::Int(i)), Ty::Int)
                } else if let Some(d) = parse_decimal(&s) {
                    Typed::new(Node::Const(V::Num(d)), Ty::Num)
                } else if let Ok(f) = s.parse::<f64>() {
                    Typed::new(Node::Const(V::Float(f)), Ty::Float)
                } else {
                    return Err(self.err(at, format!("{s} is not a number Sluice can represent")));
                }
            }
            ast::Value::SingleQuotedString(s) | ast::Value::EscapedStringLiteral(s) => {
                Typed { node: Node::Const(V::Text(Cow::Owned(s.clone()))), ty: Ty::Text, untyped: true, pushable: true }
            }
            ast::Value::DoubleQuotedString(s) => {
                return Err(
                    self.err(at, format!("\"{s}\" is an identifier in SQL; write string constants in single quotes"))
                )
            }
            other => return Err(self.err(at, format!("unsupported literal {other}"))),
        })
    }

    fn data_type(&self, d: &DataType, at: &Ast) -> Result<Ty, String> {
        let name = d.to_string().to_ascii_lowercase();
        let base = name.split('(').next().unwrap_or("").trim();
        if name.contains('(') && !matches!(base, "timestamp" | "timestamptz" | "time") {
            return Err(self.err(
                at,
                format!("casts to {name} are not supported (a sized type truncates or rounds); cast to {base}"),
            ));
        }
        Ok(match base {
            // 64-bit integer arithmetic and range for every integer cast.
            "int" | "integer" | "bigint" | "int4" | "int8" | "signed" => Ty::Int,
            "numeric" | "decimal" | "dec" => Ty::Num,
            "float" | "float8" | "double" | "double precision" => Ty::Float,
            "text" | "varchar" | "character varying" | "char" | "character" | "string" => Ty::Text,
            "boolean" | "bool" => Ty::Bool,
            "date" => Ty::Date,
            "time" | "time without time zone" => Ty::Time,
            "timestamp" | "timestamp without time zone" | "datetime" => Ty::Ts,
            "timestamptz" | "timestamp with time zone" => Ty::TsTz,
            "uuid" => Ty::Uuid,
            "bytea" => Ty::Bytes,
            _ => return Err(self.err(at, format!("casts to {name} are not supported"))),
        })
    }

    /// An operand that must be text (LIKE, lower, ...); untyped literals are text.
    fn text_operand(&mut self, e: &Ast) -> Result<Typed, String> {
        let t = self.expr(e)?;
        match t.ty {
            Ty::Text | Ty::Null => Ok(Typed { untyped: false, ..t }),
            other => Err(self.err(e, format!("expected text, found {} (cast it: CAST(x AS text))", other.name()))),
        }
    }

    fn check_comparable(&self, ty: Ty, at: &Ast) -> Result<(), String> {
        match ty {
            Ty::Json | Ty::Opaque => Err(self.err(
                at,
                format!(
                    "values of type {} cannot be compared; test them with IS [NOT] NULL or cast them to text",
                    ty.name()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The common type of a comparison's operands.
    fn unify_types(&self, a: Ty, b: &Typed, at: &Ast) -> Result<Ty, String> {
        let bt = b.ty;
        if a == bt || bt == Ty::Null || (b.untyped && a != Ty::Null) {
            return Ok(a);
        }
        if a == Ty::Null {
            return Ok(bt);
        }
        Ok(match (a, bt) {
            (x, y) if x.numeric() && y.numeric() => {
                if x == Ty::Float || y == Ty::Float {
                    Ty::Float
                } else {
                    Ty::Num
                }
            }
            (Ty::Date, Ty::Ts) | (Ty::Ts, Ty::Date) => Ty::Ts,
            (Ty::Date | Ty::Ts, Ty::TsTz) | (Ty::TsTz, Ty::Date | Ty::Ts) => Ty::TsTz,
            (Ty::Text, Ty::Uuid) | (Ty::Uuid, Ty::Text) => Ty::Text,
            _ => return Err(self.err(at, format!("cannot compare {} with {}", a.name(), bt.name()))),
        })
    }

    fn comparable(&mut self, at: &Ast, a: &Ast, b: &Ast) -> Result<(Node, Node, Ty, bool), String> {
        let l = self.expr(a)?;
        let r = self.expr(b)?;
        let ty =
            if l.untyped && !r.untyped { self.unify_types(r.ty, &l, at)? } else { self.unify_types(l.ty, &r, at)? };
        let ty = if ty == Ty::Null { Ty::Text } else { ty };
        self.check_comparable(ty, at)?;
        let l = self.coerce(l, ty, a)?;
        let r = self.coerce(r, ty, b)?;
        Ok((l.node, r.node, ty, l.pushable && r.pushable))
    }

    /// Convert `t` to `to`: literals now, other values at run time.
    fn coerce(&self, t: Typed, to: Ty, at: &Ast) -> Result<Typed, String> {
        if t.ty == to || t.ty == Ty::Null {
            return Ok(Typed { untyped: false, ..t });
        }
        if let Node::Const(v) = &t.node {
            let converted = cast(v.clone(), t.ty, to).map_err(|m| self.err(at, m))?;
            return Ok(Typed {
                node: Node::Const(converted.into_owned()),
                ty: to,
                untyped: false,
                pushable: t.pushable,
            });
        }
        let allowed = match (t.ty, to) {
            (x, y) if x.numeric() && y.numeric() => true,
            (_, Ty::Text) => true,
            (Ty::Text, _) => !matches!(to, Ty::Json | Ty::Opaque),
            (Ty::Date, Ty::Ts | Ty::TsTz) | (Ty::Ts | Ty::TsTz, Ty::Date) | (Ty::Ts, Ty::TsTz) | (Ty::TsTz, Ty::Ts) => {
                true
            }
            (Ty::Ts | Ty::TsTz, Ty::Time) => true,
            (Ty::Bool, Ty::Int) | (Ty::Int, Ty::Bool) => true,
            _ => false,
        };
        if !allowed {
            return Err(self.err(at, format!("cannot convert {} to {}", t.ty.name(), to.name())));
        }
        // Postgres only allows immutable functions in row filters: casts
        // between number types are; text I/O of dates and times is not.
        // Not pushed: a cast Postgres cannot do for some row (out of range,
        // bad text) would fail the server's decoding for good, and text I/O
        // casts are not allowed in row filters at all.
        let pushable = false;
        Ok(Typed { node: Node::Cast(Box::new(t.node), t.ty, to), ty: to, untyped: false, pushable })
    }

    fn binary(&mut self, e: &Ast, left: &Ast, op: &BinaryOperator, right: &Ast) -> Result<Typed, String> {
        let cmp = match op {
            BinaryOperator::Eq => Some(CmpOp::Eq),
            BinaryOperator::NotEq => Some(CmpOp::Ne),
            BinaryOperator::Lt => Some(CmpOp::Lt),
            BinaryOperator::LtEq => Some(CmpOp::Le),
            BinaryOperator::Gt => Some(CmpOp::Gt),
            BinaryOperator::GtEq => Some(CmpOp::Ge),
            _ => None,
        };
        if let Some(c) = cmp {
            let (l, r, ty, pushable) = self.comparable(e, left, right)?;
            return Ok(Typed {
                node: Node::Cmp(c, Box::new(l), Box::new(r), ty),
                ty: Ty::Bool,
                untyped: false,
                pushable,
            });
        }
        match op {
            BinaryOperator::And | BinaryOperator::Or => {
                let l = self.expr(left)?;
                let l = self.to_bool(l, left)?;
                let r = self.expr(right)?;
                let r = self.to_bool(r, right)?;
                let pushable = l.pushable && r.pushable;
                let (a, b) = (Box::new(l.node), Box::new(r.node));
                let node = if *op == BinaryOperator::And { Node::And(a, b) } else { Node::Or(a, b) };
                Ok(Typed { node, ty: Ty::Bool, untyped: false, pushable })
            }
            BinaryOperator::StringConcat => {
                let l = self.expr(left)?;
                let r = self.expr(right)?;
                if l.ty != Ty::Text && r.ty != Ty::Text && l.ty != Ty::Null && r.ty != Ty::Null {
                    return Err(self.err(e, "|| needs a text operand"));
                }
                let pushable = l.pushable && r.pushable && l.ty == Ty::Text && r.ty == Ty::Text;
                let l = self.coerce(l, Ty::Text, left)?;
                let r = self.coerce(r, Ty::Text, right)?;
                Ok(Typed {
                    node: Node::Concat(Box::new(l.node), Box::new(r.node)),
                    ty: Ty::Text,
                    untyped: false,
                    pushable,
                })
            }
            BinaryOperator::Plus
            | BinaryOperator::Minus
            | BinaryOperator::Multiply
            | BinaryOperator::Divide
            | BinaryOperator::Modulo => {
                let a = match op {
                    BinaryOperator::Plus => ArOp::Add,
                    BinaryOperator::Minus => ArOp::Sub,
                    BinaryOperator::Multiply => ArOp::Mul,
                    BinaryOperator::Divide => ArOp::Div,
                    _ => ArOp::Mod,
                };
                let l = self.expr(left)?;
                let r = self.expr(right)?;
                for (t, at) in [(&l, left), (&r, right)] {
                    if !t.ty.numeric() && t.ty != Ty::Null && !t.untyped {
                        return Err(self.err(at, format!("arithmetic needs numbers, found {}", t.ty.name())));
                    }
                }
                let ty = match (l.ty, r.ty) {
                    (Ty::Float, _) | (_, Ty::Float) => Ty::Float,
                    (Ty::Num, _) | (_, Ty::Num) => Ty::Num,
                    _ => Ty::Int,
                };
                // Not pushed: overflow or division by zero in a publication
                // filter stops the server's decoding for good.
                let pushable = false;
                let l = self.coerce(l, ty, left)?;
                let r = self.coerce(r, ty, right)?;
                Ok(Typed { node: Node::Arith(a, Box::new(l.node), Box::new(r.node), ty), ty, untyped: false, pushable })
            }
            other => Err(self.err(e, format!("the operator {other} is not supported in filters"))),
        }
    }

    fn function(&mut self, e: &Ast, f: &ast::Function) -> Result<Typed, String> {
        let name = f.name.to_string().to_ascii_lowercase();
        let FunctionArguments::List(list) = &f.args else {
            return Err(self.err(e, format!("{name} needs arguments in parentheses")));
        };
        if f.filter.is_some() || f.over.is_some() || !f.within_group.is_empty() || list.duplicate_treatment.is_some() {
            return Err(self.err(e, format!("aggregate or window syntax is not supported ({name})")));
        }
        let mut args = Vec::new();
        for a in &list.args {
            match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => args.push(x),
                _ => return Err(self.err(e, format!("{name}: only plain arguments are supported"))),
            }
        }
        let one = |cx: &Self| -> Result<&Ast, String> {
            if args.len() == 1 {
                Ok(args[0])
            } else {
                Err(cx.err(e, format!("{name} takes one argument")))
            }
        };
        match name.as_str() {
            "lower" | "upper" | "btrim" | "ltrim" | "rtrim" => {
                let x = one(self)?;
                let x = self.text_operand(x)?;
                let func = match name.as_str() {
                    "lower" => Func::Lower,
                    "upper" => Func::Upper,
                    "btrim" => Func::Trim(TrimSide::Both),
                    "ltrim" => Func::Trim(TrimSide::Leading),
                    _ => Func::Trim(TrimSide::Trailing),
                };
                // Case mapping: Rust's is Unicode's, Postgres's depends on the
                // database's collation; only trimming is pushed.
                let pushable = x.pushable && matches!(func, Func::Trim(_));
                Ok(Typed { node: Node::Func(func, Box::new(x.node)), ty: Ty::Text, untyped: false, pushable })
            }
            "length" | "char_length" | "character_length" => {
                let x = one(self)?;
                let x = self.text_operand(x)?;
                Ok(Typed { node: Node::Func(Func::Length, Box::new(x.node)), ty: Ty::Int, untyped: false, pushable: x.pushable })
            }
            "abs" => {
                let x = one(self)?;
                let t = self.expr(x)?;
                if !t.ty.numeric() {
                    return Err(self.err(x, format!("abs needs a number, found {}", t.ty.name())));
                }
                let ty = t.ty;
                Ok(Typed { node: Node::Func(Func::Abs, Box::new(t.node)), ty, untyped: false, pushable: false })
            }
            "coalesce" => {
                if args.is_empty() {
                    return Err(self.err(e, "coalesce needs arguments"));
                }
                let mut ty = Ty::Null;
                let mut typed = Vec::new();
                for a in &args {
                    let t = self.expr(a)?;
                    ty = if ty == Ty::Null && t.untyped { Ty::Text } else { self.unify_types(ty, &t, a)? };
                    typed.push(t);
                }
                let mut nodes = Vec::new();
                let mut pushable = true;
                for (t, a) in typed.into_iter().zip(&args) {
                    let t = self.coerce(t, ty, a)?;
                    pushable &= t.pushable;
                    nodes.push(t.node);
                }
                Ok(Typed { node: Node::Coalesce(nodes), ty, untyped: false, pushable })
            }
            _ => Err(self.err(
                e,
                format!("unknown function {name}; filters know lower, upper, length, char_length, abs, coalesce, trim/btrim/ltrim/rtrim"),
            )),
        }
    }
}

fn join_idents(parts: &[ast::Ident]) -> String {
    parts.iter().map(|p| p.value.as_str()).collect::<Vec<_>>().join(".")
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "yes" | "y" | "on" | "1" => Some(true),
        "f" | "false" | "no" | "n" | "off" | "0" => Some(false),
        _ => None,
    }
}

fn parse_decimal(s: &str) -> Option<Decimal> {
    let s = s.trim();
    if s.contains(['e', 'E']) {
        return Decimal::from_scientific(s).ok();
    }
    s.parse::<Decimal>().ok()
}

/// Convert a value between types (`CAST`). Errors describe the value.
fn cast<'a>(v: V<'a>, from: Ty, to: Ty) -> Result<V<'a>, String> {
    if matches!(v, V::Null) || from == to {
        return Ok(v);
    }
    let bad =
        |v: &V| format!("{} is not a valid {}", v.text().map(|t| format!("{t:?}")).unwrap_or_default(), to.name());
    Ok(match (v, to) {
        (v, Ty::Text) => V::Text(Cow::Owned(v.text().unwrap_or_default())),
        (V::Text(s), Ty::Int) => V::Int(s.trim().parse().map_err(|_| bad(&V::Text(s.clone())))?),
        (V::Text(s), Ty::Num) => V::Num(parse_decimal(&s).ok_or_else(|| bad(&V::Text(s.clone())))?),
        (V::Text(s), Ty::Float) => V::Float(parse_float(&s).ok_or_else(|| bad(&V::Text(s.clone())))?),
        (V::Text(s), Ty::Bool) => V::Bool(parse_bool(&s).ok_or_else(|| bad(&V::Text(s.clone())))?),
        (V::Text(s), Ty::Date) => V::Date(parse_date(&s).ok_or_else(|| bad(&V::Text(s.clone())))?),
        (V::Text(s), Ty::Time) => V::Time(parse_time(&s).ok_or_else(|| bad(&V::Text(s.clone())))?),
        (V::Text(s), Ty::Ts) => V::Ts(parse_timestamp(&s).ok_or_else(|| bad(&V::Text(s.clone())))?),
        (V::Text(s), Ty::TsTz) => V::TsTz(parse_timestamp(&s).ok_or_else(|| bad(&V::Text(s.clone())))?),
        (V::Text(s), Ty::Uuid) => {
            let hex: String = s.chars().filter(|c| *c != '-').collect::<String>().to_ascii_lowercase();
            if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(&V::Text(s)));
            }
            V::Text(Cow::Owned(format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )))
        }
        (V::Text(s), Ty::Bytes) => {
            let h = s.strip_prefix("\\x").ok_or_else(|| bad(&V::Text(s.clone())))?;
            if h.len() % 2 != 0 || !h.is_ascii() {
                return Err(bad(&V::Text(s)));
            }
            let mut out = Vec::with_capacity(h.len() / 2);
            for i in (0..h.len()).step_by(2) {
                out.push(u8::from_str_radix(&h[i..i + 2], 16).map_err(|_| bad(&V::Text(s.clone())))?);
            }
            V::Bytes(Cow::Owned(out))
        }
        (V::Int(i), Ty::Num) => V::Num(Decimal::from(i)),
        (V::Int(i), Ty::Float) => V::Float(i as f64),
        (V::Int(i), Ty::Bool) => V::Bool(i != 0),
        (V::Bool(b), Ty::Int) => V::Int(b as i64),
        (V::Num(n), Ty::Int) => V::Int(
            n.round_dp_with_strategy(0, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
                .to_i64()
                .ok_or_else(|| format!("{n} is out of range for integer"))?,
        ),
        (V::Num(n), Ty::Float) => V::Float(n.to_f64().unwrap_or(f64::NAN)),
        (V::Float(f), Ty::Int) => {
            let r = f.round_ties_even();
            if !r.is_finite() || r < i64::MIN as f64 || r >= i64::MAX as f64 {
                return Err(format!("{f} is out of range for integer"));
            }
            V::Int(r as i64)
        }
        (V::Float(f), Ty::Num) => V::Num(
            <Decimal as rust_decimal::prelude::FromPrimitive>::from_f64(f)
                .ok_or_else(|| format!("{f} cannot be a numeric"))?,
        ),
        (V::Date(d), Ty::Ts) => V::Ts(date_micros(d)),
        (V::Date(d), Ty::TsTz) => V::TsTz(date_micros(d)),
        (V::Ts(t) | V::TsTz(t), Ty::Date) => V::Date(micros_date(t)),
        (V::Ts(t), Ty::TsTz) => V::TsTz(t),
        (V::TsTz(t), Ty::Ts) => V::Ts(t),
        (V::Ts(t) | V::TsTz(t), Ty::Time) => V::Time(t.rem_euclid(86_400_000_000)),
        (v, _) => {
            return Err(format!(
                "cannot convert {} to {}",
                from.name(),
                v.text().map(|_| to.name()).unwrap_or(to.name())
            ))
        }
    })
}

fn parse_float(s: &str) -> Option<f64> {
    match s.trim().to_ascii_lowercase().as_str() {
        "nan" => Some(f64::NAN),
        "infinity" | "inf" => Some(f64::INFINITY),
        "-infinity" | "-inf" => Some(f64::NEG_INFINITY),
        t => t.parse().ok(),
    }
}

fn date_micros(d: i32) -> i64 {
    match d {
        i32::MAX => i64::MAX,
        i32::MIN => i64::MIN,
        d => (d as i64).saturating_mul(86_400_000_000),
    }
}

fn micros_date(t: i64) -> i32 {
    match t {
        i64::MAX => i32::MAX,
        i64::MIN => i32::MIN,
        t => t.div_euclid(86_400_000_000).clamp(i32::MIN as i64 + 1, i32::MAX as i64 - 1) as i32,
    }
}

/// A column value as an expression value (`None`: not sent by the source).
fn column_value(v: &Value) -> Option<V<'_>> {
    Some(match v {
        Value::Unchanged => return None,
        Value::Null => V::Null,
        Value::Bool(b) => V::Bool(*b),
        Value::Int(i) => V::Int(*i),
        Value::UInt(u) => V::Num(Decimal::from(*u)),
        Value::Float(f) => V::Float(*f),
        // NaN, infinities and numerics beyond 28 digits compare as floats.
        Value::Numeric(n) => match parse_decimal(n) {
            Some(d) => V::Num(d),
            None => V::Float(parse_float(n).unwrap_or(f64::NAN)),
        },
        Value::Text(s) | Value::Uuid(s) | Value::Json(s) => V::Text(Cow::Borrowed(s)),
        Value::Bytes(b) => V::Bytes(Cow::Borrowed(b)),
        Value::Date(d) => V::Date(*d),
        Value::Time(t) => V::Time(*t),
        Value::Timestamp(t) => V::Ts(*t),
        Value::TimestampTz(t) => V::TsTz(*t),
        Value::Array(_) => V::Text(Cow::Owned(text_form(v).unwrap_or_default())),
    })
}

/// Postgres's float order: NaN equals NaN and sorts above every number.
fn cmp_f64(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Compare two non-NULL values of one comparison type.
fn compare(a: &V, b: &V) -> Option<Ordering> {
    Some(match (a, b) {
        (V::Int(x), V::Int(y)) => x.cmp(y),
        (V::Num(x), V::Num(y)) => x.cmp(y),
        (V::Int(_) | V::Num(_), V::Int(_) | V::Num(_)) => a.as_dec()?.cmp(&b.as_dec()?),
        (V::Float(_) | V::Int(_) | V::Num(_), V::Float(_) | V::Int(_) | V::Num(_)) => cmp_f64(a.as_f64()?, b.as_f64()?),
        (V::Text(x), V::Text(y)) => x.as_ref().cmp(y.as_ref()),
        (V::Bool(x), V::Bool(y)) => x.cmp(y),
        (V::Bytes(x), V::Bytes(y)) => x.as_ref().cmp(y.as_ref()),
        (V::Date(x), V::Date(y)) => x.cmp(y),
        (V::Time(x), V::Time(y)) => x.cmp(y),
        (V::Ts(x) | V::TsTz(x), V::Ts(y) | V::TsTz(y)) => x.cmp(y),
        _ => return None,
    })
}

/// A data-dependent evaluation error.
#[derive(Debug)]
pub struct EvalError(pub String);

type R<'a> = Result<V<'a>, EvalError>;

impl Compiled {
    /// Test a row image (`values` in the schema's column order).
    pub fn test(&self, values: &[Value]) -> Result<Tri, EvalError> {
        if self.columns.iter().any(|&i| values.get(i).is_none_or(|v| matches!(v, Value::Unchanged))) {
            return Ok(Tri::Unknown);
        }
        Ok(match eval(&self.root, values)? {
            V::Bool(true) => Tri::True,
            _ => Tri::False,
        })
    }
    pub fn text(&self) -> &str {
        &self.text
    }
}

fn truth(v: &V) -> Option<bool> {
    match v {
        V::Bool(b) => Some(*b),
        _ => None,
    }
}

fn tri(b: Option<bool>) -> V<'static> {
    match b {
        Some(b) => V::Bool(b),
        None => V::Null,
    }
}

fn eval<'a>(n: &'a Node, row: &'a [Value]) -> R<'a> {
    Ok(match n {
        Node::Col(i, read) => match (column_value(&row[*i]).unwrap_or(V::Null), read) {
            (V::Text(t), Read::TrimBlanks) => V::Text(match t {
                Cow::Borrowed(b) => Cow::Borrowed(b.trim_end_matches(' ')),
                Cow::Owned(o) => Cow::Owned(o.trim_end_matches(' ').to_string()),
            }),
            (V::Float(f), Read::Float32) => V::Float(f as f32 as f64),
            (v, _) => v,
        },
        Node::Const(v) => match v {
            V::Text(t) => V::Text(Cow::Borrowed(t.as_ref())),
            V::Bytes(b) => V::Bytes(Cow::Borrowed(b.as_ref())),
            other => other.clone(),
        },
        Node::Not(x) => tri(truth(&eval(x, row)?).map(|b| !b)),
        // AND is decided by a FALSE operand, OR by a TRUE one; otherwise
        // any NULL makes the result NULL.
        Node::And(a, b) => junction(a, b, false, row)?,
        Node::Or(a, b) => junction(a, b, true, row)?,
        Node::Cmp(op, a, b, _) => {
            let (l, r) = (eval(a, row)?, eval(b, row)?);
            if matches!(l, V::Null) || matches!(r, V::Null) {
                return Ok(V::Null);
            }
            match compare(&l, &r) {
                Some(o) => V::Bool(op.holds(o)),
                None => return Err(EvalError(format!("cannot compare {l:?} with {r:?}"))),
            }
        }
        Node::IsNull(x, neg) => V::Bool(matches!(eval(x, row)?, V::Null) != *neg),
        Node::IsBool(x, want, neg) => V::Bool((truth(&eval(x, row)?) == Some(*want)) != *neg),
        Node::Distinct(a, b, neg) => {
            let (l, r) = (eval(a, row)?, eval(b, row)?);
            let same = match (&l, &r) {
                (V::Null, V::Null) => true,
                (V::Null, _) | (_, V::Null) => false,
                _ => compare(&l, &r) == Some(Ordering::Equal),
            };
            V::Bool(same == *neg)
        }
        Node::In(x, items, neg) => {
            let v = eval(x, row)?;
            if matches!(v, V::Null) {
                return Ok(V::Null);
            }
            let mut saw_null = false;
            for it in items {
                let w = eval(it, row)?;
                if matches!(w, V::Null) {
                    saw_null = true;
                } else if compare(&v, &w) == Some(Ordering::Equal) {
                    return Ok(V::Bool(!neg));
                }
            }
            if saw_null {
                V::Null
            } else {
                V::Bool(*neg)
            }
        }
        Node::Like { expr, pattern, escape, ci, negated } => {
            let (V::Text(s), V::Text(p)) = (eval(expr, row)?, eval(pattern, row)?) else {
                return Ok(V::Null);
            };
            let m = if *ci { like(&s.to_lowercase(), &p.to_lowercase(), *escape) } else { like(&s, &p, *escape) };
            V::Bool(m != *negated)
        }
        Node::Arith(op, a, b, ty) => {
            let (l, r) = (eval(a, row)?, eval(b, row)?);
            if matches!(l, V::Null) || matches!(r, V::Null) {
                return Ok(V::Null);
            }
            arith(*op, &l, &r, *ty)?
        }
        Node::Neg(x) => match eval(x, row)? {
            V::Int(i) => V::Int(i.checked_neg().ok_or_else(|| EvalError("integer out of range".into()))?),
            V::Num(d) => V::Num(-d),
            V::Float(f) => V::Float(-f),
            _ => V::Null,
        },
        Node::Concat(a, b) => {
            let (l, r) = (eval(a, row)?, eval(b, row)?);
            match (l, r) {
                (V::Text(x), V::Text(y)) => V::Text(Cow::Owned(format!("{x}{y}"))),
                _ => V::Null,
            }
        }
        Node::Func(f, x) => {
            let v = eval(x, row)?;
            match (f, v) {
                (_, V::Null) => V::Null,
                (Func::Lower, V::Text(s)) => V::Text(Cow::Owned(s.to_lowercase())),
                (Func::Upper, V::Text(s)) => V::Text(Cow::Owned(s.to_uppercase())),
                (Func::Length, V::Text(s)) => V::Int(s.chars().count() as i64),
                (Func::Trim(side), V::Text(s)) => {
                    let t = match side {
                        TrimSide::Both => s.trim_matches(' '),
                        TrimSide::Leading => s.trim_start_matches(' '),
                        TrimSide::Trailing => s.trim_end_matches(' '),
                    };
                    V::Text(Cow::Owned(t.to_string()))
                }
                (Func::Abs, V::Int(i)) => {
                    V::Int(i.checked_abs().ok_or_else(|| EvalError("integer out of range".into()))?)
                }
                (Func::Abs, V::Num(d)) => V::Num(d.abs()),
                (Func::Abs, V::Float(f)) => V::Float(f.abs()),
                (f, v) => return Err(EvalError(format!("{f:?} cannot take {v:?}"))),
            }
        }
        Node::Coalesce(items) => {
            for it in items {
                let v = eval(it, row)?;
                if !matches!(v, V::Null) {
                    return Ok(v);
                }
            }
            V::Null
        }
        Node::Cast(x, from, to) => cast(eval(x, row)?, *from, *to).map_err(EvalError)?,
    })
}

/// `a AND b` (`decisive` false) or `a OR b` (`decisive` true), three-valued,
/// without evaluating `b` once `a` decides.
fn junction<'a>(a: &'a Node, b: &'a Node, decisive: bool, row: &'a [Value]) -> R<'a> {
    let l = truth(&eval(a, row)?);
    if l == Some(decisive) {
        return Ok(V::Bool(decisive));
    }
    let r = truth(&eval(b, row)?);
    Ok(match (l, r) {
        (_, Some(x)) if x == decisive => V::Bool(decisive),
        (Some(_), Some(_)) => V::Bool(!decisive),
        _ => V::Null,
    })
}

fn arith<'a>(op: ArOp, l: &V, r: &V, ty: Ty) -> R<'a> {
    let overflow = || EvalError("numeric value out of range".into());
    let div0 = || EvalError("division by zero".into());
    Ok(match ty {
        Ty::Int => {
            let (V::Int(a), V::Int(b)) = (l, r) else { return Err(EvalError("integer operands expected".into())) };
            V::Int(match op {
                ArOp::Add => a.checked_add(*b).ok_or_else(overflow)?,
                ArOp::Sub => a.checked_sub(*b).ok_or_else(overflow)?,
                ArOp::Mul => a.checked_mul(*b).ok_or_else(overflow)?,
                ArOp::Div if *b == 0 => return Err(div0()),
                ArOp::Div => a.checked_div(*b).ok_or_else(overflow)?,
                ArOp::Mod if *b == 0 => return Err(div0()),
                ArOp::Mod => a.checked_rem(*b).ok_or_else(overflow)?,
            })
        }
        Ty::Num if l.as_dec().is_some() && r.as_dec().is_some() => {
            let (a, b) = (l.as_dec().unwrap_or_default(), r.as_dec().unwrap_or_default());
            if matches!(op, ArOp::Div | ArOp::Mod) && b.is_zero() {
                return Err(div0());
            }
            V::Num(
                match op {
                    ArOp::Add => a.checked_add(b),
                    ArOp::Sub => a.checked_sub(b),
                    ArOp::Mul => a.checked_mul(b),
                    ArOp::Div => a.checked_div(b),
                    ArOp::Mod => a.checked_rem(b),
                }
                .ok_or_else(overflow)?,
            )
        }
        _ => {
            let (Some(a), Some(b)) = (l.as_f64(), r.as_f64()) else {
                return Err(EvalError("numeric operands expected".into()));
            };
            if ty != Ty::Float && matches!(op, ArOp::Div | ArOp::Mod) && b == 0.0 {
                return Err(div0());
            }
            V::Float(match op {
                ArOp::Add => a + b,
                ArOp::Sub => a - b,
                ArOp::Mul => a * b,
                ArOp::Div if b == 0.0 => return Err(div0()),
                ArOp::Div => a / b,
                ArOp::Mod => a % b,
            })
        }
    })
}

/// SQL LIKE: `%` any run, `_` one character, `escape` quotes the next one.
pub fn like(s: &str, p: &str, escape: Option<char>) -> bool {
    #[derive(PartialEq)]
    enum Tok {
        Any,
        One,
        Lit(char),
    }
    let mut toks = Vec::new();
    let mut it = p.chars();
    while let Some(c) = it.next() {
        if Some(c) == escape {
            if let Some(n) = it.next() {
                toks.push(Tok::Lit(n));
            }
        } else if c == '%' {
            if toks.last() != Some(&Tok::Any) {
                toks.push(Tok::Any);
            }
        } else if c == '_' {
            toks.push(Tok::One);
        } else {
            toks.push(Tok::Lit(c));
        }
    }
    let s: Vec<char> = s.chars().collect();
    // Greedy matching with backtracking to the last `%`.
    let (mut si, mut ti) = (0usize, 0usize);
    let mut back: Option<(usize, usize)> = None;
    while si < s.len() {
        match toks.get(ti) {
            Some(Tok::Any) => {
                back = Some((ti, si));
                ti += 1;
            }
            Some(Tok::One) => {
                si += 1;
                ti += 1;
            }
            Some(Tok::Lit(c)) if *c == s[si] => {
                si += 1;
                ti += 1;
            }
            _ => match back {
                Some((bt, bs)) => {
                    ti = bt + 1;
                    si = bs + 1;
                    back = Some((bt, bs + 1));
                }
                None => return false,
            },
        }
    }
    while toks.get(ti) == Some(&Tok::Any) {
        ti += 1;
    }
    ti == toks.len()
}

/// The expression in Postgres syntax, with every constant typed and every
/// text ordering under `COLLATE "C"` (Sluice compares code points).
fn render(n: &Node, schema: &TableSchema) -> String {
    let r = |x: &Node| render(x, schema);
    match n {
        Node::Col(i, _) => quote_ident(&schema.columns[*i].name),
        Node::Const(v) => match v {
            V::Null => "NULL".into(),
            V::Bool(b) => (if *b { "true" } else { "false" }).into(),
            V::Int(i) => format!("({i})::bigint"),
            V::Num(d) => format!("{}::numeric", quote_literal(&d.to_string())),
            V::Float(f) => {
                let mut s = String::new();
                crate::text::float_text(*f, &mut s);
                format!("{}::float8", quote_literal(&s))
            }
            V::Text(t) => quote_literal(t),
            V::Bytes(_) | V::Date(_) | V::Time(_) | V::Ts(_) | V::TsTz(_) => {
                let ty = match v {
                    V::Bytes(_) => "bytea",
                    V::Date(_) => "date",
                    V::Time(_) => "time",
                    V::Ts(_) => "timestamp",
                    _ => "timestamptz",
                };
                format!("{}::{ty}", quote_literal(&v.text().unwrap_or_default()))
            }
        },
        Node::Not(x) => format!("(NOT {})", r(x)),
        Node::And(a, b) => format!("({} AND {})", r(a), r(b)),
        Node::Or(a, b) => format!("({} OR {})", r(a), r(b)),
        Node::Cmp(op, a, b, ty) => {
            let c = if *ty == Ty::Text && !matches!(op, CmpOp::Eq | CmpOp::Ne) { " COLLATE \"C\"" } else { "" };
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

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::{Column, ReplicaIdentity, TableId};

    fn col(name: &str, ty: ColumnType) -> Column {
        Column {
            name: name.into(),
            ty,
            source_type: String::new(),
            type_id: 23,
            type_modifier: -1,
            key: name == "id",
            nullable: true,
        }
    }

    fn schema() -> TableSchema {
        TableSchema {
            database: "db".into(),
            id: TableId::new("shop", "orders"),
            columns: vec![
                col("id", ColumnType::Int64),
                col("status", ColumnType::Text),
                col("amount", ColumnType::Numeric { precision: Some(10), scale: Some(2) }),
                col("created", ColumnType::TimestampTz),
                col("Mixed Case", ColumnType::Int32),
                col("score", ColumnType::Float64),
                col("doc", ColumnType::Json),
            ],
            replica_identity: ReplicaIdentity::Default,
            version: 1,
        }
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
