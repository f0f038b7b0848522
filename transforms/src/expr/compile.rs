//! Binding a parsed expression to one table: columns resolved, types
//! checked, string literals converted once; every error found here is
//! reported with the expression's line and column.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub(super) fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
    pub(super) fn holds(self, o: Ordering) -> bool {
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
pub(super) enum ArOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Func {
    Lower,
    Upper,
    Length,
    Abs,
    Trim(TrimSide),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TrimSide {
    Both,
    Leading,
    Trailing,
}

/// How a column's value is read for SQL semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Read {
    AsIs,
    /// `character(n)`: trailing blanks are insignificant.
    TrimBlanks,
    /// `real`: widened from single precision, as Postgres compares it.
    Float32,
}

#[derive(Debug, Clone)]
pub(super) enum Node {
    Col(usize, Read),
    Const(ExprValue<'static>),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>, ExprType),
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
    Arith(ArOp, Box<Node>, Box<Node>, ExprType),
    Neg(Box<Node>),
    Concat(Box<Node>, Box<Node>),
    Func(Func, Box<Node>),
    Coalesce(Vec<Node>),
    Cast(Box<Node>, ExprType, ExprType),
}

/// A typed sub-expression during compilation.
pub(super) struct Typed {
    pub(super) node: Node,
    pub(super) ty: ExprType,
    /// A string literal not yet given a type (SQL's "unknown" literals).
    pub(super) untyped: bool,
    /// Something Postgres may not accept in a publication row filter.
    pub(super) pushable: bool,
}

impl Typed {
    pub(super) fn new(node: Node, ty: ExprType) -> Typed {
        Typed { node, ty, untyped: false, pushable: true }
    }
}

/// An expression bound to one table.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub(super) text: String,
    pub(super) root: Node,
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

pub(super) struct Ctx<'a> {
    pub(super) schema: &'a TableSchema,
    pub(super) columns: Vec<usize>,
}

impl Ctx<'_> {
    pub(super) fn err(&self, node: &dyn Spanned, msg: impl std::fmt::Display) -> String {
        self.err_at(node.span(), msg)
    }

    pub(super) fn err_at(&self, s: sqlparser::tokenizer::Span, msg: impl std::fmt::Display) -> String {
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
    pub(super) fn to_bool(&self, t: Typed, at: &Ast) -> Result<Typed, String> {
        match t.ty {
            ExprType::Bool | ExprType::Null => Ok(t),
            _ if t.untyped => {
                let b = match &t.node {
                    Node::Const(ExprValue::Text(s)) => {
                        parse_bool(s).ok_or_else(|| self.err(at, format!("{s:?} is not a boolean")))?
                    }
                    _ => return Err(self.err(at, "expected a boolean condition")),
                };
                Ok(Typed::new(Node::Const(ExprValue::Bool(b)), ExprType::Bool))
            }
            other => Err(self.err(at, format!("expected a boolean condition, found a value of type {}", other.name()))),
        }
    }

    pub(super) fn column(&mut self, ident: &ast::Ident) -> Result<Typed, String> {
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
        let ty = ExprType::of(&c.ty);
        Ok(Typed { node: Node::Col(i, read), ty, untyped: false, pushable })
    }

    pub(super) fn expr(&mut self, e: &Ast) -> Result<Typed, String> {
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
                let lit = Typed {
                    node: Node::Const(ExprValue::Text(Cow::Owned(s))),
                    ty: ExprType::Text,
                    untyped: true,
                    pushable: true,
                };
                self.coerce(lit, to, e)
            }
            Ast::UnaryOp { op, expr } => {
                let t = self.expr(expr)?;
                match op {
                    UnaryOperator::Not => {
                        let t = self.to_bool(t, expr)?;
                        Ok(Typed {
                            node: Node::Not(Box::new(t.node)),
                            ty: ExprType::Bool,
                            untyped: false,
                            pushable: t.pushable,
                        })
                    }
                    UnaryOperator::Minus | UnaryOperator::Plus => {
                        if !t.ty.numeric() && t.ty != ExprType::Null {
                            return Err(self.err(e, format!("unary {op} needs a number, found {}", t.ty.name())));
                        }
                        if *op == UnaryOperator::Plus {
                            return Ok(t);
                        }
                        let (node, pushable) = match t.node {
                            Node::Const(ExprValue::Int(i)) if i != i64::MIN => {
                                (Node::Const(ExprValue::Int(-i)), t.pushable)
                            }
                            Node::Const(ExprValue::Num(n)) => (Node::Const(ExprValue::Num(-n)), t.pushable),
                            Node::Const(ExprValue::Float(f)) => (Node::Const(ExprValue::Float(-f)), t.pushable),
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
                    ty: ExprType::Bool,
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
                    ty: ExprType::Bool,
                    untyped: false,
                    pushable: t.pushable,
                })
            }
            Ast::IsDistinctFrom(a, b) | Ast::IsNotDistinctFrom(a, b) => {
                let (l, r, _, pushable) = self.comparable(e, a, b)?;
                let neg = matches!(e, Ast::IsNotDistinctFrom(..));
                Ok(Typed {
                    node: Node::Distinct(Box::new(l), Box::new(r), neg),
                    ty: ExprType::Bool,
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
                if x.untyped && ty != ExprType::Text {
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
                Ok(Typed {
                    node: Node::In(Box::new(x.node), items, *negated),
                    ty: ExprType::Bool,
                    untyped: false,
                    pushable,
                })
            }
            Ast::Between { expr, negated, low, high } => {
                let (x1, lo, ty1, p1) = self.comparable(e, expr, low)?;
                let (x2, hi, ty2, p2) = self.comparable(e, expr, high)?;
                let ge = Node::Cmp(CmpOp::Ge, Box::new(x1), Box::new(lo), ty1);
                let le = Node::Cmp(CmpOp::Le, Box::new(x2), Box::new(hi), ty2);
                let both = Node::And(Box::new(ge), Box::new(le));
                let node = if *negated { Node::Not(Box::new(both)) } else { both };
                Ok(Typed { node, ty: ExprType::Bool, untyped: false, pushable: p1 && p2 })
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
                if let (Node::Const(ExprValue::Text(pat)), Some(esc)) = (&p.node, escape) {
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
                    ty: ExprType::Bool,
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
                    ty: ExprType::Text,
                    untyped: false,
                    pushable: x.pushable,
                })
            }
            Ast::Subquery(_) | Ast::Exists { .. } => Err(self.err(e, "subqueries are not supported in filters")),
            other => Err(self.err(other, format!("unsupported syntax in a filter: {other}"))),
        }
    }

    pub(super) fn literal(&self, v: &ast::Value, at: &Ast) -> Result<Typed, String> {
        Ok(match v {
            ast::Value::Null => Typed::new(Node::Const(ExprValue::Null), ExprType::Null),
            ast::Value::Boolean(b) => Typed::new(Node::Const(ExprValue::Bool(*b)), ExprType::Bool),
            ast::Value::Number(n, _) => {
                let s = n.to_string();
                if let Ok(i) = s.parse::<i64>() {
                    Typed::new(Node::Const(ExprValue::Int(i)), ExprType::Int)
                } else if let Some(d) = parse_decimal(&s) {
                    Typed::new(Node::Const(ExprValue::Num(d)), ExprType::Num)
                } else if let Ok(f) = s.parse::<f64>() {
                    Typed::new(Node::Const(ExprValue::Float(f)), ExprType::Float)
                } else {
                    return Err(self.err(at, format!("{s} is not a number Sluice can represent")));
                }
            }
            ast::Value::SingleQuotedString(s) | ast::Value::EscapedStringLiteral(s) => Typed {
                node: Node::Const(ExprValue::Text(Cow::Owned(s.clone()))),
                ty: ExprType::Text,
                untyped: true,
                pushable: true,
            },
            ast::Value::DoubleQuotedString(s) => {
                return Err(
                    self.err(at, format!("\"{s}\" is an identifier in SQL; write string constants in single quotes"))
                )
            }
            other => return Err(self.err(at, format!("unsupported literal {other}"))),
        })
    }

    pub(super) fn data_type(&self, d: &DataType, at: &Ast) -> Result<ExprType, String> {
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
            "int" | "integer" | "bigint" | "int4" | "int8" | "signed" => ExprType::Int,
            "numeric" | "decimal" | "dec" => ExprType::Num,
            "float" | "float8" | "double" | "double precision" => ExprType::Float,
            "text" | "varchar" | "character varying" | "char" | "character" | "string" => ExprType::Text,
            "boolean" | "bool" => ExprType::Bool,
            "date" => ExprType::Date,
            "time" | "time without time zone" => ExprType::Time,
            "timestamp" | "timestamp without time zone" | "datetime" => ExprType::Ts,
            "timestamptz" | "timestamp with time zone" => ExprType::TsTz,
            "uuid" => ExprType::Uuid,
            "bytea" => ExprType::Bytes,
            _ => return Err(self.err(at, format!("casts to {name} are not supported"))),
        })
    }

    /// An operand that must be text (LIKE, lower, ...); untyped literals are text.
    pub(super) fn text_operand(&mut self, e: &Ast) -> Result<Typed, String> {
        let t = self.expr(e)?;
        match t.ty {
            ExprType::Text | ExprType::Null => Ok(Typed { untyped: false, ..t }),
            other => Err(self.err(e, format!("expected text, found {} (cast it: CAST(x AS text))", other.name()))),
        }
    }

    pub(super) fn check_comparable(&self, ty: ExprType, at: &Ast) -> Result<(), String> {
        match ty {
            ExprType::Json | ExprType::Opaque => Err(self.err(
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
    pub(super) fn unify_types(&self, a: ExprType, b: &Typed, at: &Ast) -> Result<ExprType, String> {
        let bt = b.ty;
        if a == bt || bt == ExprType::Null || (b.untyped && a != ExprType::Null) {
            return Ok(a);
        }
        if a == ExprType::Null {
            return Ok(bt);
        }
        Ok(match (a, bt) {
            (x, y) if x.numeric() && y.numeric() => {
                if x == ExprType::Float || y == ExprType::Float {
                    ExprType::Float
                } else {
                    ExprType::Num
                }
            }
            (ExprType::Date, ExprType::Ts) | (ExprType::Ts, ExprType::Date) => ExprType::Ts,
            (ExprType::Date | ExprType::Ts, ExprType::TsTz) | (ExprType::TsTz, ExprType::Date | ExprType::Ts) => {
                ExprType::TsTz
            }
            (ExprType::Text, ExprType::Uuid) | (ExprType::Uuid, ExprType::Text) => ExprType::Text,
            _ => return Err(self.err(at, format!("cannot compare {} with {}", a.name(), bt.name()))),
        })
    }

    pub(super) fn comparable(&mut self, at: &Ast, a: &Ast, b: &Ast) -> Result<(Node, Node, ExprType, bool), String> {
        let l = self.expr(a)?;
        let r = self.expr(b)?;
        let ty =
            if l.untyped && !r.untyped { self.unify_types(r.ty, &l, at)? } else { self.unify_types(l.ty, &r, at)? };
        let ty = if ty == ExprType::Null { ExprType::Text } else { ty };
        self.check_comparable(ty, at)?;
        let l = self.coerce(l, ty, a)?;
        let r = self.coerce(r, ty, b)?;
        Ok((l.node, r.node, ty, l.pushable && r.pushable))
    }

    /// Convert `t` to `to`: literals now, other values at run time.
    pub(super) fn coerce(&self, t: Typed, to: ExprType, at: &Ast) -> Result<Typed, String> {
        if t.ty == to || t.ty == ExprType::Null {
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
            (_, ExprType::Text) => true,
            (ExprType::Text, _) => !matches!(to, ExprType::Json | ExprType::Opaque),
            (ExprType::Date, ExprType::Ts | ExprType::TsTz)
            | (ExprType::Ts | ExprType::TsTz, ExprType::Date)
            | (ExprType::Ts, ExprType::TsTz)
            | (ExprType::TsTz, ExprType::Ts) => true,
            (ExprType::Ts | ExprType::TsTz, ExprType::Time) => true,
            (ExprType::Bool, ExprType::Int) | (ExprType::Int, ExprType::Bool) => true,
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

    pub(super) fn binary(&mut self, e: &Ast, left: &Ast, op: &BinaryOperator, right: &Ast) -> Result<Typed, String> {
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
                ty: ExprType::Bool,
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
                Ok(Typed { node, ty: ExprType::Bool, untyped: false, pushable })
            }
            BinaryOperator::StringConcat => {
                let l = self.expr(left)?;
                let r = self.expr(right)?;
                if l.ty != ExprType::Text && r.ty != ExprType::Text && l.ty != ExprType::Null && r.ty != ExprType::Null
                {
                    return Err(self.err(e, "|| needs a text operand"));
                }
                let pushable = l.pushable && r.pushable && l.ty == ExprType::Text && r.ty == ExprType::Text;
                let l = self.coerce(l, ExprType::Text, left)?;
                let r = self.coerce(r, ExprType::Text, right)?;
                Ok(Typed {
                    node: Node::Concat(Box::new(l.node), Box::new(r.node)),
                    ty: ExprType::Text,
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
                    if !t.ty.numeric() && t.ty != ExprType::Null && !t.untyped {
                        return Err(self.err(at, format!("arithmetic needs numbers, found {}", t.ty.name())));
                    }
                }
                let ty = match (l.ty, r.ty) {
                    (ExprType::Float, _) | (_, ExprType::Float) => ExprType::Float,
                    (ExprType::Num, _) | (_, ExprType::Num) => ExprType::Num,
                    _ => ExprType::Int,
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

    pub(super) fn function(&mut self, e: &Ast, f: &ast::Function) -> Result<Typed, String> {
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
                Ok(Typed { node: Node::Func(func, Box::new(x.node)), ty: ExprType::Text, untyped: false, pushable })
            }
            "length" | "char_length" | "character_length" => {
                let x = one(self)?;
                let x = self.text_operand(x)?;
                Ok(Typed { node: Node::Func(Func::Length, Box::new(x.node)), ty: ExprType::Int, untyped: false, pushable: x.pushable })
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
                let mut ty = ExprType::Null;
                let mut typed = Vec::new();
                for a in &args {
                    let t = self.expr(a)?;
                    ty = if ty == ExprType::Null && t.untyped { ExprType::Text } else { self.unify_types(ty, &t, a)? };
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

pub(super) fn join_idents(parts: &[ast::Ident]) -> String {
    parts.iter().map(|p| p.value.as_str()).collect::<Vec<_>>().join(".")
}
