//! Row filters: a small, validated expression language.
//!
//! A table's `filter:` is parsed into an expression tree and rendered back to
//! SQL by permafrost with quoted identifiers and literals, so nothing from the
//! configuration is ever pasted into a query as-is.  Grammar:
//!
//! ```text
//! expr       := and ("OR" and)*
//! and        := not ("AND" not)*
//! not        := "NOT" not | "(" expr ")" | predicate
//! predicate  := column op literal
//!             | column "IS" ["NOT"] "NULL"
//!             | column ["NOT"] "IN" "(" literal ("," literal)* ")"
//!             | column ["NOT"] "BETWEEN" literal "AND" literal
//!             | column ["NOT"] "LIKE" string
//! op         := "=" | "!=" | "<>" | "<" | "<=" | ">" | ">="
//! literal    := number | 'string' | TRUE | FALSE
//! column     := identifier | "quoted identifier"
//! ```

use std::fmt;

use crate::error::{Error, Result};

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    expr: Expr,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Cmp(String, CmpOp, Lit),
    IsNull(String, bool),
    In(String, bool, Vec<Lit>),
    Between(String, bool, Lit, Lit),
    Like(String, bool, String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Number(String),
    Str(String),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Quoted(String),
    Number(String),
    Str(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
}

fn err(msg: impl fmt::Display) -> Error {
    Error::config(format!("invalid filter: {msg}"))
        .with_hint("filters look like: sensor_type = 'temp' AND value IS NOT NULL")
}

fn tokenize(s: &str) -> Result<Vec<Tok>> {
    let mut toks = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '(' {
            toks.push(Tok::LParen);
            i += 1;
        } else if c == ')' {
            toks.push(Tok::RParen);
            i += 1;
        } else if c == ',' {
            toks.push(Tok::Comma);
            i += 1;
        } else if c == '\'' || c == '"' {
            let q = c;
            let mut v = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(err(format!("unterminated {q} quote"))),
                    Some(&ch) if ch == q => {
                        if chars.get(i + 1) == Some(&q) {
                            v.push(q);
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    }
                    Some(&ch) => {
                        v.push(ch);
                        i += 1;
                    }
                }
            }
            toks.push(if q == '\'' {
                Tok::Str(v)
            } else {
                Tok::Quoted(v)
            });
        } else if c.is_ascii_digit()
            || ((c == '-' || c == '.') && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || chars[i] == '.'
                    || chars[i] == 'e'
                    || chars[i] == 'E'
                    || ((chars[i] == '-' || chars[i] == '+') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
            let n: String = chars[start..i].iter().collect();
            if n.parse::<f64>().is_err() {
                return Err(err(format!("`{n}` is not a number")));
            }
            toks.push(Tok::Number(n));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            toks.push(Tok::Ident(chars[start..i].iter().collect()));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let op = match two.as_str() {
                "<=" => Some("<="),
                ">=" => Some(">="),
                "<>" => Some("<>"),
                "!=" => Some("!="),
                _ => None,
            };
            if let Some(op) = op {
                toks.push(Tok::Op(op));
                i += 2;
            } else {
                let op = match c {
                    '=' => "=",
                    '<' => "<",
                    '>' => ">",
                    _ => return Err(err(format!("unexpected character `{c}`"))),
                };
                toks.push(Tok::Op(op));
                i += 1;
            }
        }
    }
    Ok(toks)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn keyword(&mut self, kw: &str) -> bool {
        if let Some(Tok::Ident(w)) = self.peek()
            && w.eq_ignore_ascii_case(kw)
        {
            self.pos += 1;
            return true;
        }
        false
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<()> {
        if self.keyword(kw) {
            Ok(())
        } else {
            Err(err(format!("expected {kw}")))
        }
    }

    fn or(&mut self) -> Result<Expr> {
        let mut e = self.and()?;
        while self.keyword("OR") {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr> {
        let mut e = self.not()?;
        while self.keyword("AND") {
            e = Expr::And(Box::new(e), Box::new(self.not()?));
        }
        Ok(e)
    }

    fn not(&mut self) -> Result<Expr> {
        if self.keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.or()?;
            if self.next() != Some(Tok::RParen) {
                return Err(err("missing `)`"));
            }
            return Ok(e);
        }
        self.predicate()
    }

    fn column(&mut self) -> Result<String> {
        match self.next() {
            Some(Tok::Ident(w)) if !is_reserved(&w) => Ok(w.to_lowercase()),
            Some(Tok::Quoted(w)) => Ok(w),
            Some(t) => Err(err(format!(
                "expected a column name, found {}",
                describe(&t)
            ))),
            None => Err(err("expected a column name, found the end")),
        }
    }

    fn literal(&mut self) -> Result<Lit> {
        match self.next() {
            Some(Tok::Number(n)) => Ok(Lit::Number(n)),
            Some(Tok::Str(s)) => Ok(Lit::Str(s)),
            Some(Tok::Ident(w)) if w.eq_ignore_ascii_case("true") => Ok(Lit::Bool(true)),
            Some(Tok::Ident(w)) if w.eq_ignore_ascii_case("false") => Ok(Lit::Bool(false)),
            Some(t) => Err(err(format!(
                "expected a literal (number, 'string', true, false), found {}",
                describe(&t)
            ))),
            None => Err(err("expected a literal, found the end")),
        }
    }

    fn predicate(&mut self) -> Result<Expr> {
        let col = self.column()?;
        if self.keyword("IS") {
            let not = self.keyword("NOT");
            self.expect_keyword("NULL")?;
            return Ok(Expr::IsNull(col, not));
        }
        let not = self.keyword("NOT");
        if self.keyword("IN") {
            if self.next() != Some(Tok::LParen) {
                return Err(err("expected `(` after IN"));
            }
            let mut items = vec![self.literal()?];
            loop {
                match self.next() {
                    Some(Tok::Comma) => items.push(self.literal()?),
                    Some(Tok::RParen) => break,
                    _ => return Err(err("expected `,` or `)` in IN list")),
                }
            }
            return Ok(Expr::In(col, not, items));
        }
        if self.keyword("BETWEEN") {
            let lo = self.literal()?;
            self.expect_keyword("AND")?;
            let hi = self.literal()?;
            return Ok(Expr::Between(col, not, lo, hi));
        }
        if self.keyword("LIKE") {
            return match self.next() {
                Some(Tok::Str(s)) => Ok(Expr::Like(col, not, s)),
                _ => Err(err("LIKE needs a 'string' pattern")),
            };
        }
        if not {
            return Err(err("expected IN, BETWEEN or LIKE after NOT"));
        }
        let op = match self.next() {
            Some(Tok::Op("=")) => CmpOp::Eq,
            Some(Tok::Op("!=")) | Some(Tok::Op("<>")) => CmpOp::Ne,
            Some(Tok::Op("<")) => CmpOp::Lt,
            Some(Tok::Op("<=")) => CmpOp::Le,
            Some(Tok::Op(">")) => CmpOp::Gt,
            Some(Tok::Op(">=")) => CmpOp::Ge,
            Some(t) => {
                return Err(err(format!(
                    "expected a comparison after `{col}`, found {}",
                    describe(&t)
                )));
            }
            None => return Err(err(format!("expected a comparison after `{col}`"))),
        };
        Ok(Expr::Cmp(col, op, self.literal()?))
    }
}

fn is_reserved(w: &str) -> bool {
    [
        "and", "or", "not", "is", "null", "in", "between", "like", "true", "false", "select",
        "from", "where",
    ]
    .contains(&w.to_ascii_lowercase().as_str())
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Ident(w) => format!("`{w}`"),
        Tok::Quoted(w) => format!("\"{w}\""),
        Tok::Number(n) => n.clone(),
        Tok::Str(s) => format!("'{s}'"),
        Tok::Op(o) => format!("`{o}`"),
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::Comma => "`,`".into(),
    }
}

/// Quotes an SQL identifier: `"name"` with embedded quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes an SQL string literal (requires `standard_conforming_strings = on`,
/// which permafrost sets on every connection).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Filter {
    /// Parses a filter expression.
    pub fn parse(s: &str) -> Result<Self> {
        let toks = tokenize(s)?;
        if toks.is_empty() {
            return Err(err("empty"));
        }
        let mut p = Parser { toks, pos: 0 };
        let expr = p.or()?;
        if let Some(t) = p.peek() {
            return Err(err(format!(
                "unexpected {} after the expression",
                describe(t)
            )));
        }
        Ok(Self { expr })
    }

    /// Columns the filter refers to.
    pub fn columns(&self) -> Vec<String> {
        fn walk(e: &Expr, out: &mut Vec<String>) {
            match e {
                Expr::And(a, b) | Expr::Or(a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                Expr::Not(a) => walk(a, out),
                Expr::Cmp(c, ..)
                | Expr::IsNull(c, _)
                | Expr::In(c, ..)
                | Expr::Between(c, ..)
                | Expr::Like(c, ..) => {
                    if !out.contains(c) {
                        out.push(c.clone())
                    }
                }
            }
        }
        let mut out = vec![];
        walk(&self.expr, &mut out);
        out
    }

    /// Checks every column exists in `columns`.
    pub fn validate_columns(&self, columns: &[String]) -> Result<()> {
        for c in self.columns() {
            if !columns.contains(&c) {
                return Err(err(format!("unknown column `{c}`"))
                    .with_hint(format!("columns: {}", columns.join(", "))));
            }
        }
        Ok(())
    }

    /// The filter as SQL, with identifiers and literals quoted by permafrost.
    pub fn to_sql(&self) -> String {
        fn lit(l: &Lit) -> String {
            match l {
                Lit::Number(n) => n.clone(),
                Lit::Str(s) => quote_literal(s),
                Lit::Bool(b) => b.to_string(),
            }
        }
        fn go(e: &Expr) -> String {
            match e {
                Expr::And(a, b) => format!("({} AND {})", go(a), go(b)),
                Expr::Or(a, b) => format!("({} OR {})", go(a), go(b)),
                Expr::Not(a) => format!("(NOT {})", go(a)),
                Expr::Cmp(c, op, l) => {
                    let o = match op {
                        CmpOp::Eq => "=",
                        CmpOp::Ne => "<>",
                        CmpOp::Lt => "<",
                        CmpOp::Le => "<=",
                        CmpOp::Gt => ">",
                        CmpOp::Ge => ">=",
                    };
                    format!("({} {o} {})", quote_ident(c), lit(l))
                }
                Expr::IsNull(c, not) => format!(
                    "({} IS {}NULL)",
                    quote_ident(c),
                    if *not { "NOT " } else { "" }
                ),
                Expr::In(c, not, items) => format!(
                    "({} {}IN ({}))",
                    quote_ident(c),
                    if *not { "NOT " } else { "" },
                    items.iter().map(lit).collect::<Vec<_>>().join(", ")
                ),
                Expr::Between(c, not, lo, hi) => format!(
                    "({} {}BETWEEN {} AND {})",
                    quote_ident(c),
                    if *not { "NOT " } else { "" },
                    lit(lo),
                    lit(hi)
                ),
                Expr::Like(c, not, p) => {
                    format!(
                        "({} {}LIKE {})",
                        quote_ident(c),
                        if *not { "NOT " } else { "" },
                        quote_literal(p)
                    )
                }
            }
        }
        go(&self.expr)
    }
}

/// The operator of a field filter (`{"amount_gte": 1000}`): the suffix after
/// the column name; no suffix is `eq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldOp {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
    In,
    NotIn,
    /// `'prefix%'` patterns only (pushed down as starts-with).
    Like,
    /// `true`: IS NULL; `false`: IS NOT NULL.
    IsNull,
}

impl FieldOp {
    /// Every operator with its suffix.
    pub const ALL: [(&'static str, FieldOp); 10] = [
        ("eq", FieldOp::Eq),
        ("ne", FieldOp::Ne),
        ("lt", FieldOp::Lt),
        ("lte", FieldOp::Lte),
        ("gt", FieldOp::Gt),
        ("gte", FieldOp::Gte),
        ("in", FieldOp::In),
        ("not_in", FieldOp::NotIn),
        ("like", FieldOp::Like),
        ("is_null", FieldOp::IsNull),
    ];

    /// Splits `key` into a column of `columns` and an operator: the whole key
    /// when it is a column (`status` is `status = …`), else `column_suffix`.
    pub fn split<'a>(key: &'a str, columns: &[String]) -> Option<(&'a str, FieldOp)> {
        if columns.iter().any(|c| c == key) {
            return Some((key, FieldOp::Eq));
        }
        Self::ALL.iter().find_map(|(suffix, op)| {
            let col = key.strip_suffix(suffix)?.strip_suffix('_')?;
            columns.iter().any(|c| c == col).then_some((col, *op))
        })
    }
}

impl Filter {
    /// A field filter: `column op values`.  Values are taken as text and
    /// converted to the column's type by [`Filter::to_predicate`] (so they
    /// are never SQL); `in`/`not_in` take one or more, `is_null` takes
    /// `true` or `false`, the others exactly one.
    pub fn field(column: &str, op: FieldOp, values: Vec<String>) -> Result<Self> {
        let c = column.to_string();
        let one = |values: Vec<String>| -> Result<Lit> {
            match <[String; 1]>::try_from(values) {
                Ok([v]) => Ok(Lit::Str(v)),
                Err(v) => Err(err(format!(
                    "`{column}` takes one value here, not {}",
                    v.len()
                ))),
            }
        };
        let expr = match op {
            FieldOp::Eq => Expr::Cmp(c, CmpOp::Eq, one(values)?),
            FieldOp::Ne => Expr::Cmp(c, CmpOp::Ne, one(values)?),
            FieldOp::Lt => Expr::Cmp(c, CmpOp::Lt, one(values)?),
            FieldOp::Lte => Expr::Cmp(c, CmpOp::Le, one(values)?),
            FieldOp::Gt => Expr::Cmp(c, CmpOp::Gt, one(values)?),
            FieldOp::Gte => Expr::Cmp(c, CmpOp::Ge, one(values)?),
            FieldOp::In | FieldOp::NotIn if values.is_empty() => {
                return Err(err(format!("`{column}`: an empty list")));
            }
            FieldOp::In => Expr::In(c, false, values.into_iter().map(Lit::Str).collect()),
            FieldOp::NotIn => Expr::In(c, true, values.into_iter().map(Lit::Str).collect()),
            FieldOp::Like => match one(values)? {
                Lit::Str(p) => Expr::Like(c, false, p),
                _ => return Err(err("LIKE takes a string")),
            },
            FieldOp::IsNull => match one(values)?.as_bool() {
                Some(b) => Expr::IsNull(c, !b),
                None => return Err(err(format!("`{column}_is_null` takes true or false"))),
            },
        };
        Ok(Self { expr })
    }

    /// Both filters.
    pub fn and(self, other: Filter) -> Self {
        Self {
            expr: Expr::And(Box::new(self.expr), Box::new(other.expr)),
        }
    }
}

impl Lit {
    fn as_bool(&self) -> Option<bool> {
        match self {
            Lit::Bool(b) => Some(*b),
            Lit::Str(s) | Lit::Number(s) => match s.to_ascii_lowercase().as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
        }
    }
}

impl Filter {
    /// The filter as an Iceberg predicate over `schema` (for `fetch --where`):
    /// literals are converted to each column's type, exactly; `LIKE` takes
    /// `'prefix%'` patterns.
    pub fn to_predicate(&self, schema: &iceberg::spec::Schema) -> Result<iceberg::expr::Predicate> {
        use iceberg::expr::{Predicate, Reference};
        fn column_type<'a>(
            schema: &'a iceberg::spec::Schema,
            c: &str,
        ) -> Result<&'a iceberg::spec::PrimitiveType> {
            let f = schema.field_by_name(c).ok_or_else(|| {
                let names: Vec<String> = schema
                    .as_struct()
                    .fields()
                    .iter()
                    .map(|f| f.name.clone())
                    .collect();
                err(format!("unknown column `{c}`"))
                    .with_hint(format!("columns: {}", names.join(", ")))
            })?;
            match f.field_type.as_ref() {
                iceberg::spec::Type::Primitive(p) => Ok(p),
                other => Err(err(format!("cannot filter on `{c}` of type {other}"))),
            }
        }
        fn datum(
            c: &str,
            l: &Lit,
            t: &iceberg::spec::PrimitiveType,
        ) -> Result<iceberg::spec::Datum> {
            use iceberg::spec::{Datum, PrimitiveType as P};
            let text = match l {
                Lit::Number(n) | Lit::Str(n) => n.clone(),
                Lit::Bool(b) => b.to_string(),
            };
            let bad = |e: String| {
                err(format!(
                    "`{text}` is not a valid value for `{c}` ({t}): {e}"
                ))
            };
            let r = match t {
                P::Boolean => Datum::bool_from_str(&text).map_err(|e| bad(e.to_string()))?,
                P::Int => Datum::int(text.parse::<i32>().map_err(|e| bad(e.to_string()))?),
                P::Long => Datum::long(text.parse::<i64>().map_err(|e| bad(e.to_string()))?),
                P::Float => Datum::float(text.parse::<f32>().map_err(|e| bad(e.to_string()))?),
                P::Double => Datum::double(text.parse::<f64>().map_err(|e| bad(e.to_string()))?),
                P::Decimal { precision, scale } => {
                    let mut d = rust_decimal::Decimal::from_str_exact(&text)
                        .map_err(|e| bad(e.to_string()))?;
                    if d.scale() > *scale {
                        return Err(bad(format!("more than {scale} decimal places")));
                    }
                    d.rescale(*scale);
                    let _ = precision;
                    Datum::decimal_from_str(d.to_string()).map_err(|e| bad(e.to_string()))?
                }
                P::String => Datum::string(text),
                P::Date => Datum::date_from_str(&text).map_err(|e| bad(e.to_string()))?,
                P::Time => Datum::time_from_str(&text).map_err(|e| bad(e.to_string()))?,
                P::Timestamp | P::Timestamptz => {
                    let t2 = crate::plan::window::parse_instant(&text)
                        .ok_or_else(|| bad("not a timestamp".into()))?;
                    if *t == P::Timestamp {
                        Datum::timestamp_micros(t2)
                    } else {
                        Datum::timestamptz_micros(t2)
                    }
                }
                P::Uuid => Datum::uuid_from_str(&text).map_err(|e| bad(e.to_string()))?,
                other => return Err(err(format!("cannot filter on `{c}` of type {other}"))),
            };
            Ok(r)
        }
        fn go(e: &Expr, schema: &iceberg::spec::Schema) -> Result<Predicate> {
            Ok(match e {
                Expr::And(a, b) => go(a, schema)?.and(go(b, schema)?),
                Expr::Or(a, b) => go(a, schema)?.or(go(b, schema)?),
                Expr::Not(a) => go(a, schema)?.negate(),
                Expr::Cmp(c, op, l) => {
                    let d = datum(c, l, column_type(schema, c)?)?;
                    let r = Reference::new(c.clone());
                    match op {
                        CmpOp::Eq => r.equal_to(d),
                        CmpOp::Ne => r.not_equal_to(d),
                        CmpOp::Lt => r.less_than(d),
                        CmpOp::Le => r.less_than_or_equal_to(d),
                        CmpOp::Gt => r.greater_than(d),
                        CmpOp::Ge => r.greater_than_or_equal_to(d),
                    }
                }
                Expr::IsNull(c, not) => {
                    column_type(schema, c)?;
                    let r = Reference::new(c.clone());
                    if *not { r.is_not_null() } else { r.is_null() }
                }
                Expr::In(c, not, items) => {
                    let t = column_type(schema, c)?;
                    let ds = items
                        .iter()
                        .map(|l| datum(c, l, t))
                        .collect::<Result<Vec<_>>>()?;
                    let r = Reference::new(c.clone());
                    if *not { r.is_not_in(ds) } else { r.is_in(ds) }
                }
                Expr::Between(c, not, lo, hi) => {
                    let t = column_type(schema, c)?;
                    let p = Reference::new(c.clone())
                        .greater_than_or_equal_to(datum(c, lo, t)?)
                        .and(Reference::new(c.clone()).less_than_or_equal_to(datum(c, hi, t)?));
                    if *not { p.negate() } else { p }
                }
                Expr::Like(c, not, pattern) => {
                    column_type(schema, c)?;
                    let prefix = pattern
                        .strip_suffix('%')
                        .filter(|p| !p.contains(['%', '_']));
                    let Some(prefix) = prefix else {
                        return Err(err(format!(
                            "LIKE '{pattern}': only 'prefix%' patterns can be pushed down"
                        )));
                    };
                    let r = Reference::new(c.clone());
                    let d = iceberg::spec::Datum::string(prefix);
                    if *not {
                        r.not_starts_with(d)
                    } else {
                        r.starts_with(d)
                    }
                }
            })
        }
        go(&self.expr, schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_filters_split_keys_and_never_render_values_as_sql() {
        let cols: Vec<String> = ["amount", "status", "created_at", "is_null"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            FieldOp::split("status", &cols),
            Some(("status", FieldOp::Eq))
        );
        assert_eq!(
            FieldOp::split("amount_gte", &cols),
            Some(("amount", FieldOp::Gte))
        );
        assert_eq!(
            FieldOp::split("status_not_in", &cols),
            Some(("status", FieldOp::NotIn))
        );
        // A column named like an operator is the column.
        assert_eq!(
            FieldOp::split("is_null", &cols),
            Some(("is_null", FieldOp::Eq))
        );
        assert_eq!(FieldOp::split("nope_gte", &cols), None);
        assert_eq!(FieldOp::split("amount_between", &cols), None);
        let f = Filter::field("status", FieldOp::Eq, vec!["x'; DROP TABLE t; --".into()])
            .unwrap()
            .and(Filter::field("amount", FieldOp::In, vec!["1".into(), "2".into()]).unwrap());
        assert_eq!(
            f.to_sql(),
            "((\"status\" = 'x''; DROP TABLE t; --') AND (\"amount\" IN ('1', '2')))"
        );
        assert!(Filter::field("amount", FieldOp::Gte, vec![]).is_err());
        assert!(Filter::field("amount", FieldOp::In, vec![]).is_err());
        assert!(Filter::field("amount", FieldOp::IsNull, vec!["maybe".into()]).is_err());
    }

    #[test]
    fn renders_quoted_sql() {
        let f = Filter::parse("sensor_type = 'temp' AND value IS NOT NULL").unwrap();
        assert_eq!(
            f.to_sql(),
            "((\"sensor_type\" = 'temp') AND (\"value\" IS NOT NULL))"
        );
        assert_eq!(
            f.columns(),
            vec!["sensor_type".to_string(), "value".to_string()]
        );
    }

    #[test]
    fn operators_and_lists() {
        let f = Filter::parse("NOT (a IN (1, 2.5, -3) OR \"Mixed Case\" BETWEEN 'a' AND 'z') AND b NOT LIKE 'x%' AND c <> 1e3").unwrap();
        assert_eq!(
            f.to_sql(),
            "(((NOT ((\"a\" IN (1, 2.5, -3)) OR (\"Mixed Case\" BETWEEN 'a' AND 'z'))) AND (\"b\" NOT LIKE 'x%')) AND (\"c\" <> 1e3))"
        );
    }

    #[test]
    fn injection_attempts_stay_literals_or_fail() {
        let f = Filter::parse("name = 'x''; DROP TABLE t; --'").unwrap();
        assert_eq!(f.to_sql(), "(\"name\" = 'x''; DROP TABLE t; --')");
        assert!(Filter::parse("a = 1; DROP TABLE t").is_err());
        assert!(Filter::parse("a = 1 -- comment").is_err());
        assert!(Filter::parse("a = b").is_err());
        assert!(Filter::parse("a = (SELECT 1)").is_err());
        assert!(Filter::parse("1 = 1").is_err());
        assert!(Filter::parse("").is_err());
        assert!(Filter::parse("a = 'open").is_err());
    }

    #[test]
    fn predicates_convert_literals_to_column_types() {
        use std::sync::Arc;

        use iceberg::expr::Bind;
        use iceberg::spec::{NestedField, PrimitiveType, Schema, Type};
        let schema = Schema::builder()
            .with_fields(vec![
                Arc::new(NestedField::optional(
                    1,
                    "n",
                    Type::Primitive(PrimitiveType::Long),
                )),
                Arc::new(NestedField::optional(
                    2,
                    "q",
                    Type::Primitive(PrimitiveType::Decimal {
                        precision: 5,
                        scale: 2,
                    }),
                )),
                Arc::new(NestedField::optional(
                    3,
                    "s",
                    Type::Primitive(PrimitiveType::String),
                )),
                Arc::new(NestedField::optional(
                    4,
                    "t",
                    Type::Primitive(PrimitiveType::Timestamptz),
                )),
            ])
            .build()
            .unwrap();
        let p = Filter::parse(
            "n > 5 AND q = 1.5 AND s LIKE 'ab%' AND t < '2024-01-02' AND n IN (1, 2)",
        )
        .unwrap()
        .to_predicate(&schema)
        .unwrap();
        let text = p.to_string();
        assert!(
            text.contains("n > 5") && text.contains("q = 1.50") && text.contains("STARTS WITH"),
            "{text}"
        );
        assert!(p.bind(Arc::new(schema.clone()), true).is_ok());
        for bad in ["q = 1.234", "n = 'x'", "zz = 1", "s LIKE '%x'"] {
            assert!(
                Filter::parse(bad).unwrap().to_predicate(&schema).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn column_validation() {
        let f = Filter::parse("kind = 'a'").unwrap();
        assert!(f.validate_columns(&["kind".into()]).is_ok());
        let e = f.validate_columns(&["other".into()]).unwrap_err();
        assert!(e.to_string().contains("unknown column `kind`"), "{e}");
    }
}
