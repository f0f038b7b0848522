//! Parsing a `where:` text into an SQL expression tree (sqlparser, Postgres dialect).

use super::*;

/// A parsed `where:` expression, not yet bound to a table.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub text: String,
    pub(super) ast: Ast,
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
