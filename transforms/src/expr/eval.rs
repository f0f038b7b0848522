//! Evaluating a compiled expression on a row: three-valued logic; an
//! error only data can cause makes the expression NULL.

use super::*;

/// A data-dependent evaluation error.
#[derive(Debug)]
pub struct EvalError(pub String);

pub(super) type EvalResult<'a> = Result<ExprValue<'a>, EvalError>;

impl Compiled {
    /// Test a row image (`values` in the schema's column order).
    pub fn test(&self, values: &[Value]) -> Result<Tri, EvalError> {
        if self.columns.iter().any(|&i| values.get(i).is_none_or(|v| matches!(v, Value::Unchanged))) {
            return Ok(Tri::Unknown);
        }
        Ok(match eval(&self.root, values)? {
            ExprValue::Bool(true) => Tri::True,
            _ => Tri::False,
        })
    }
    pub fn text(&self) -> &str {
        &self.text
    }
}

pub(super) fn truth(v: &ExprValue) -> Option<bool> {
    match v {
        ExprValue::Bool(b) => Some(*b),
        _ => None,
    }
}

pub(super) fn tri(b: Option<bool>) -> ExprValue<'static> {
    match b {
        Some(b) => ExprValue::Bool(b),
        None => ExprValue::Null,
    }
}

pub(super) fn eval<'a>(n: &'a Node, row: &'a [Value]) -> EvalResult<'a> {
    Ok(match n {
        Node::Col(i, read) => match (column_value(&row[*i]).unwrap_or(ExprValue::Null), read) {
            (ExprValue::Text(t), Read::TrimBlanks) => ExprValue::Text(match t {
                Cow::Borrowed(b) => Cow::Borrowed(b.trim_end_matches(' ')),
                Cow::Owned(o) => Cow::Owned(o.trim_end_matches(' ').to_string()),
            }),
            (ExprValue::Float(f), Read::Float32) => ExprValue::Float(f as f32 as f64),
            (v, _) => v,
        },
        Node::Const(v) => match v {
            ExprValue::Text(t) => ExprValue::Text(Cow::Borrowed(t.as_ref())),
            ExprValue::Bytes(b) => ExprValue::Bytes(Cow::Borrowed(b.as_ref())),
            other => other.clone(),
        },
        Node::Not(x) => tri(truth(&eval(x, row)?).map(|b| !b)),
        // AND is decided by a FALSE operand, OR by a TRUE one; otherwise
        // any NULL makes the result NULL.
        Node::And(a, b) => junction(a, b, false, row)?,
        Node::Or(a, b) => junction(a, b, true, row)?,
        Node::Cmp(op, a, b, _) => {
            let (l, r) = (eval(a, row)?, eval(b, row)?);
            if matches!(l, ExprValue::Null) || matches!(r, ExprValue::Null) {
                return Ok(ExprValue::Null);
            }
            match compare(&l, &r) {
                Some(o) => ExprValue::Bool(op.holds(o)),
                None => return Err(EvalError(format!("cannot compare {l:?} with {r:?}"))),
            }
        }
        Node::IsNull(x, neg) => ExprValue::Bool(matches!(eval(x, row)?, ExprValue::Null) != *neg),
        Node::IsBool(x, want, neg) => ExprValue::Bool((truth(&eval(x, row)?) == Some(*want)) != *neg),
        Node::Distinct(a, b, neg) => {
            let (l, r) = (eval(a, row)?, eval(b, row)?);
            let same = match (&l, &r) {
                (ExprValue::Null, ExprValue::Null) => true,
                (ExprValue::Null, _) | (_, ExprValue::Null) => false,
                _ => compare(&l, &r) == Some(Ordering::Equal),
            };
            ExprValue::Bool(same == *neg)
        }
        Node::In(x, items, neg) => {
            let v = eval(x, row)?;
            if matches!(v, ExprValue::Null) {
                return Ok(ExprValue::Null);
            }
            let mut saw_null = false;
            for it in items {
                let w = eval(it, row)?;
                if matches!(w, ExprValue::Null) {
                    saw_null = true;
                } else if compare(&v, &w) == Some(Ordering::Equal) {
                    return Ok(ExprValue::Bool(!neg));
                }
            }
            if saw_null {
                ExprValue::Null
            } else {
                ExprValue::Bool(*neg)
            }
        }
        Node::Like { expr, pattern, escape, ci, negated } => {
            let (ExprValue::Text(s), ExprValue::Text(p)) = (eval(expr, row)?, eval(pattern, row)?) else {
                return Ok(ExprValue::Null);
            };
            let m = if *ci { like(&s.to_lowercase(), &p.to_lowercase(), *escape) } else { like(&s, &p, *escape) };
            ExprValue::Bool(m != *negated)
        }
        Node::Arith(op, a, b, ty) => {
            let (l, r) = (eval(a, row)?, eval(b, row)?);
            if matches!(l, ExprValue::Null) || matches!(r, ExprValue::Null) {
                return Ok(ExprValue::Null);
            }
            arith(*op, &l, &r, *ty)?
        }
        Node::Neg(x) => match eval(x, row)? {
            ExprValue::Int(i) => {
                ExprValue::Int(i.checked_neg().ok_or_else(|| EvalError("integer out of range".into()))?)
            }
            ExprValue::Num(d) => ExprValue::Num(-d),
            ExprValue::Float(f) => ExprValue::Float(-f),
            _ => ExprValue::Null,
        },
        Node::Concat(a, b) => {
            let (l, r) = (eval(a, row)?, eval(b, row)?);
            match (l, r) {
                (ExprValue::Text(x), ExprValue::Text(y)) => ExprValue::Text(Cow::Owned(format!("{x}{y}"))),
                _ => ExprValue::Null,
            }
        }
        Node::Func(f, x) => {
            let v = eval(x, row)?;
            match (f, v) {
                (_, ExprValue::Null) => ExprValue::Null,
                (Func::Lower, ExprValue::Text(s)) => ExprValue::Text(Cow::Owned(s.to_lowercase())),
                (Func::Upper, ExprValue::Text(s)) => ExprValue::Text(Cow::Owned(s.to_uppercase())),
                (Func::Length, ExprValue::Text(s)) => ExprValue::Int(s.chars().count() as i64),
                (Func::Trim(side), ExprValue::Text(s)) => {
                    let t = match side {
                        TrimSide::Both => s.trim_matches(' '),
                        TrimSide::Leading => s.trim_start_matches(' '),
                        TrimSide::Trailing => s.trim_end_matches(' '),
                    };
                    ExprValue::Text(Cow::Owned(t.to_string()))
                }
                (Func::Abs, ExprValue::Int(i)) => {
                    ExprValue::Int(i.checked_abs().ok_or_else(|| EvalError("integer out of range".into()))?)
                }
                (Func::Abs, ExprValue::Num(d)) => ExprValue::Num(d.abs()),
                (Func::Abs, ExprValue::Float(f)) => ExprValue::Float(f.abs()),
                (f, v) => return Err(EvalError(format!("{f:?} cannot take {v:?}"))),
            }
        }
        Node::Coalesce(items) => {
            for it in items {
                let v = eval(it, row)?;
                if !matches!(v, ExprValue::Null) {
                    return Ok(v);
                }
            }
            ExprValue::Null
        }
        Node::Cast(x, from, to) => cast(eval(x, row)?, *from, *to).map_err(EvalError)?,
    })
}

/// `a AND b` (`decisive` false) or `a OR b` (`decisive` true), three-valued,
/// without evaluating `b` once `a` decides.
pub(super) fn junction<'a>(a: &'a Node, b: &'a Node, decisive: bool, row: &'a [Value]) -> EvalResult<'a> {
    let l = truth(&eval(a, row)?);
    if l == Some(decisive) {
        return Ok(ExprValue::Bool(decisive));
    }
    let r = truth(&eval(b, row)?);
    Ok(match (l, r) {
        (_, Some(x)) if x == decisive => ExprValue::Bool(decisive),
        (Some(_), Some(_)) => ExprValue::Bool(!decisive),
        _ => ExprValue::Null,
    })
}

pub(super) fn arith<'a>(op: ArOp, l: &ExprValue, r: &ExprValue, ty: ExprType) -> EvalResult<'a> {
    let overflow = || EvalError("numeric value out of range".into());
    let div0 = || EvalError("division by zero".into());
    Ok(match ty {
        ExprType::Int => {
            let (ExprValue::Int(a), ExprValue::Int(b)) = (l, r) else {
                return Err(EvalError("integer operands expected".into()));
            };
            ExprValue::Int(match op {
                ArOp::Add => a.checked_add(*b).ok_or_else(overflow)?,
                ArOp::Sub => a.checked_sub(*b).ok_or_else(overflow)?,
                ArOp::Mul => a.checked_mul(*b).ok_or_else(overflow)?,
                ArOp::Div if *b == 0 => return Err(div0()),
                ArOp::Div => a.checked_div(*b).ok_or_else(overflow)?,
                ArOp::Mod if *b == 0 => return Err(div0()),
                ArOp::Mod => a.checked_rem(*b).ok_or_else(overflow)?,
            })
        }
        ExprType::Num if l.as_dec().is_some() && r.as_dec().is_some() => {
            let (a, b) = (l.as_dec().unwrap_or_default(), r.as_dec().unwrap_or_default());
            if matches!(op, ArOp::Div | ArOp::Mod) && b.is_zero() {
                return Err(div0());
            }
            ExprValue::Num(
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
            if ty != ExprType::Float && matches!(op, ArOp::Div | ArOp::Mod) && b == 0.0 {
                return Err(div0());
            }
            ExprValue::Float(match op {
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
