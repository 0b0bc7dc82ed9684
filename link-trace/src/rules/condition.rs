//! Conditions: a tree of `all`/`any`/`not` over field tests, read from TOML
//! and compiled once (field names looked up, types checked, globs built), so
//! evaluating one on an event allocates nothing.
//!
//! A test names a `field` and one operator: `eq`, `ne`, `lt`, `le`, `gt`,
//! `ge` (a literal, or `{ field = "other" }` to compare two fields), `in`
//! (a list of literals), `prefix` and `glob` (a string or a list of them;
//! globs use `globset`: `*` stays within one path component, `**` crosses
//! them), `exists` (true or false). Every operator but `exists` is false
//! when the field is null; on `flag_names` (a list) an operator holds when
//! it holds for any element, and `ne` when `eq` holds for none.

use std::ops::Range;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use toml::Spanned;

use super::{
    field::{Field, Kind, Value},
    screen::{Facts, prefix_key, same_bytes},
};

/// A compile error at a byte range of the rule file.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub span: Range<usize>,
    pub message: String,
}

pub fn located<T>(span: Range<usize>, message: impl Into<String>) -> Result<T, Located> {
    Err(Located {
        span,
        message: message.into(),
    })
}

/// One or several strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// A condition as written in the file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    all: Option<Vec<Spanned<RawCondition>>>,
    any: Option<Vec<Spanned<RawCondition>>>,
    not: Option<Box<Spanned<RawCondition>>>,
    field: Option<Spanned<OneOrMany>>,
    eq: Option<Spanned<toml::Value>>,
    ne: Option<Spanned<toml::Value>>,
    lt: Option<Spanned<toml::Value>>,
    le: Option<Spanned<toml::Value>>,
    gt: Option<Spanned<toml::Value>>,
    ge: Option<Spanned<toml::Value>>,
    #[serde(rename = "in")]
    in_: Option<Spanned<Vec<Spanned<toml::Value>>>>,
    prefix: Option<Spanned<OneOrMany>>,
    glob: Option<Spanned<OneOrMany>>,
    exists: Option<Spanned<bool>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Bool(bool),
    Int(i128),
    Str(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Literal(Literal),
    Field(Field),
}

#[derive(Debug, Clone)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    Compare {
        field: Field,
        op: Op,
        operand: Operand,
    },
    In {
        field: Field,
        values: Vec<Literal>,
    },
    Prefix {
        field: Field,
        prefixes: Vec<Vec<u8>>,
    },
    Glob {
        field: Field,
        globs: GlobSet,
        /// The literal runs of each pattern: a value can only match a
        /// pattern that it contains all of, in order, which rules most
        /// values out without running globset.
        literals: Vec<GlobLiterals>,
        /// The first bytes of each head: rules out most patterns before
        /// their `literals` are looked at.
        heads: HeadKeys,
        /// The patterns as written (the engine's `GlobScreen` merges equal
        /// ones across tests).
        patterns: Vec<String>,
        /// This test's bit in the engine's `GlobScreen`, when it has one.
        screen_bit: Option<u32>,
    },
    Exists {
        field: Field,
        exists: bool,
    },
}

pub fn parse_field(name: &Spanned<String>) -> Result<Field, Located> {
    Field::parse(name.get_ref()).map_or_else(
        || {
            located(
                name.span(),
                format!(
                    "unknown field `{}`; fields are: {}",
                    name.get_ref(),
                    Field::names().join(", ")
                ),
            )
        },
        Ok,
    )
}

fn literal(value: &Spanned<toml::Value>, kind: Kind, field: &str) -> Result<Literal, Located> {
    let lit = match value.get_ref() {
        toml::Value::Boolean(b) => Literal::Bool(*b),
        toml::Value::Integer(i) => Literal::Int(i128::from(*i)),
        toml::Value::String(s) => Literal::Str(s.as_bytes().to_vec()),
        other => {
            return located(
                value.span(),
                format!(
                    "a {} cannot be compared; use a boolean, an integer or a string",
                    other.type_str()
                ),
            );
        }
    };
    let fits = matches!(
        (&lit, kind),
        (Literal::Bool(_), Kind::Bool)
            | (Literal::Int(_), Kind::Int)
            | (Literal::Str(_), Kind::Str | Kind::List)
    );
    if !fits {
        return located(
            value.span(),
            format!("field `{field}` is {}, not {}", kind.name(), {
                match lit {
                    Literal::Bool(_) => "a boolean",
                    Literal::Int(_) => "an integer",
                    Literal::Str(_) => "a string",
                }
            }),
        );
    }
    Ok(lit)
}

fn operand(
    value: &Spanned<toml::Value>,
    field: Field,
    name: &str,
    op: Op,
) -> Result<Operand, Located> {
    if let toml::Value::Table(table) = value.get_ref() {
        let other = match (table.len(), table.get("field")) {
            (1, Some(toml::Value::String(other))) => other,
            _ => return located(value.span(), "a table operand must be { field = \"NAME\" }"),
        };
        let Some(other_field) = Field::parse(other) else {
            return located(value.span(), format!("unknown field `{other}`"));
        };
        if other_field.kind() != field.kind() || field.kind() == Kind::List {
            return located(
                value.span(),
                format!(
                    "fields `{name}` ({}) and `{other}` ({}) cannot be compared",
                    field.kind().name(),
                    other_field.kind().name()
                ),
            );
        }
        return Ok(Operand::Field(other_field));
    }
    let lit = literal(value, field.kind(), name)?;
    let ordered = matches!(op, Op::Lt | Op::Le | Op::Gt | Op::Ge);
    if ordered && !matches!(lit, Literal::Int(_)) {
        return located(value.span(), "lt, le, gt and ge compare integers only");
    }
    Ok(Operand::Literal(lit))
}

/// The literal text of a glob pattern: what a match starts with, ends with,
/// and contains in between, in order.
#[derive(Debug, Clone)]
pub struct GlobLiterals {
    head: Vec<u8>,
    middle: Vec<Middle>,
    tail: Vec<u8>,
    exact: bool,
}

/// Splits a pattern into its literal runs: `*`, `?`, `[...]` classes,
/// `{`, `,`, `}` and escaped characters separate them (an escaped
/// character is left out, which only makes the check looser). A `**`
/// also takes the slashes next to it: `**/x` matches `x`, `a/**/b` matches
/// `a/b`.
fn literal_runs(pattern: &[u8]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < pattern.len() {
        let skip_to = match pattern[i] {
            b'*' if pattern.get(i + 1) == Some(&b'*') => {
                let end = i + 2 + usize::from(pattern.get(i + 2) == Some(&b'/'));
                if i > start && pattern[i - 1] == b'/' {
                    i -= 1;
                }
                end
            }
            b'*' | b'?' | b'{' | b',' | b'}' => i + 1,
            b'\\' => i + 2,
            // A class ends at the first `]` after its first character.
            b'[' => pattern
                .get(i + 2..)
                .and_then(|rest| rest.iter().position(|&b| b == b']'))
                .map_or(pattern.len(), |at| i + 2 + at + 1),
            _ => {
                i += 1;
                continue;
            }
        };
        runs.push(start..i);
        i = skip_to.min(pattern.len());
        start = i;
    }
    runs.push(start..pattern.len());
    runs
}

/// A literal run between a pattern's head and tail.
#[derive(Debug, Clone)]
struct Middle {
    finder: memchr::memmem::Finder<'static>,
    /// The run starts with `/` and only `*` and `?` stand between it and
    /// a run whose place is fixed (the head, or runs fixed like this one):
    /// those match no `/` (`literal_separator`), so the run can only start
    /// at the first `/` after that run, and is compared there rather than
    /// searched for.
    at_next_slash: bool,
}

impl GlobLiterals {
    pub fn of(pattern: &str) -> GlobLiterals {
        let bytes = pattern.as_bytes();
        let runs = literal_runs(bytes);
        let (first, last) = (runs[0].clone(), runs[runs.len() - 1].clone());
        if runs.len() == 1 {
            return GlobLiterals {
                head: bytes[first].to_vec(),
                middle: Vec::new(),
                tail: Vec::new(),
                exact: true,
            };
        }
        // A `{a,b}` alternation makes its runs optional: keep only what
        // lies outside the first and last metacharacter then.
        let mut middle = Vec::new();
        if !pattern.contains('{') {
            let (mut fixed_end, mut fixed) = (first.end, true);
            for run in runs[1..runs.len() - 1].iter().filter(|r| !r.is_empty()) {
                let gap = &bytes[fixed_end..run.start];
                fixed &= bytes[run.start] == b'/'
                    && !gap.is_empty()
                    && gap.iter().all(|&b| b == b'*' || b == b'?')
                    && !gap.windows(2).any(|w| w == b"**");
                fixed_end = run.end;
                middle.push(Middle {
                    finder: memchr::memmem::Finder::new(&bytes[run.clone()]).into_owned(),
                    at_next_slash: fixed,
                });
            }
        }
        GlobLiterals {
            head: bytes[first].to_vec(),
            middle,
            tail: bytes[last].to_vec(),
            exact: false,
        }
    }

    /// What every match starts with.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// What every match ends with (empty for an exact pattern, whose
    /// `head` is all of it).
    pub fn tail(&self) -> &[u8] {
        &self.tail
    }

    /// False when `value` cannot match the pattern.
    pub fn may_match(&self, value: &[u8]) -> bool {
        // Most values differ from most patterns within the first bytes of
        // the head or the last bytes of the tail: check those inline
        // before comparing whole slices.
        let (head, tail) = (self.head.as_slice(), self.tail.as_slice());
        if value.len() < head.len() + tail.len()
            || head.iter().take(2).zip(value).any(|(a, b)| a != b)
            || tail
                .iter()
                .rev()
                .take(2)
                .zip(value.iter().rev())
                .any(|(a, b)| a != b)
        {
            return false;
        }
        if self.exact {
            return same_bytes(value, head);
        }
        if !same_bytes(&value[..head.len()], head)
            || !same_bytes(&value[value.len() - tail.len()..], tail)
        {
            return false;
        }
        let mut rest = &value[self.head.len()..value.len() - self.tail.len()];
        for run in &self.middle {
            let needle = run.finder.needle();
            let at = if run.at_next_slash {
                // The next `/` is a path component away: a plain loop finds
                // it sooner than a call to memchr.
                rest.iter().position(|&b| b == b'/').filter(|&at| {
                    rest.len() - at >= needle.len()
                        && same_bytes(&rest[at..at + needle.len()], needle)
                })
            } else {
                run.finder.find(rest)
            };
            match at {
                Some(at) => rest = &rest[at + needle.len()..],
                None => return false,
            }
        }
        true
    }
}

/// The first bytes of each pattern's literal head (up to the shortest
/// head, at most 8), packed in a u64. Every value a pattern matches starts
/// with its head, so a pattern whose key differs from the value's first
/// bytes cannot match it. Paths mostly differ from the patterns within
/// their first bytes ("/home" vs "/etc"): one integer compare per pattern
/// settles them instead of a `GlobLiterals::may_match` call.
#[derive(Debug, Clone)]
pub struct HeadKeys {
    len: usize,
    /// One per pattern, in `literals` order.
    keys: Vec<u64>,
}

impl HeadKeys {
    pub fn of(literals: &[GlobLiterals]) -> HeadKeys {
        let len = literals
            .iter()
            .map(|l| l.head.len())
            .min()
            .unwrap_or(0)
            .min(8);
        HeadKeys {
            len,
            keys: literals.iter().map(|l| prefix_key(&l.head, len)).collect(),
        }
    }

    /// Whether `value` may match one of `literals` (those this was made of).
    pub fn may_match(&self, literals: &[GlobLiterals], value: &[u8]) -> bool {
        if value.len() < self.len {
            return false;
        }
        let key = prefix_key(value, self.len);
        self.keys
            .iter()
            .zip(literals)
            .any(|(&k, literal)| k == key && literal.may_match(value))
    }
}

/// How a rule's glob is compiled: `*` and `?` stop at `/`, `\` escapes.
fn rule_glob(pattern: &str) -> Result<globset::Glob, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

fn glob_set(patterns: &Spanned<OneOrMany>) -> Result<GlobSet, Located> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns.get_ref().clone().into_vec() {
        let glob = rule_glob(&pattern)
            .or_else(|e| located(patterns.span(), format!("bad glob `{pattern}`: {e}")))?;
        builder.add(glob);
    }
    builder
        .build()
        .or_else(|e| located(patterns.span(), format!("bad glob set: {e}")))
}

impl Condition {
    /// Compiles a condition as written; `span` is where it stands.
    pub fn compile(raw: &Spanned<RawCondition>) -> Result<Condition, Located> {
        let span = raw.span();
        let r = raw.get_ref();
        let ops: Vec<(&str, Option<Range<usize>>)> = vec![
            ("eq", r.eq.as_ref().map(Spanned::span)),
            ("ne", r.ne.as_ref().map(Spanned::span)),
            ("lt", r.lt.as_ref().map(Spanned::span)),
            ("le", r.le.as_ref().map(Spanned::span)),
            ("gt", r.gt.as_ref().map(Spanned::span)),
            ("ge", r.ge.as_ref().map(Spanned::span)),
            ("in", r.in_.as_ref().map(Spanned::span)),
            ("prefix", r.prefix.as_ref().map(Spanned::span)),
            ("glob", r.glob.as_ref().map(Spanned::span)),
            ("exists", r.exists.as_ref().map(Spanned::span)),
        ];
        let given: Vec<&str> = ops
            .iter()
            .filter(|(_, s)| s.is_some())
            .map(|(n, _)| *n)
            .collect();
        let shapes = [r.all.is_some(), r.any.is_some(), r.not.is_some()]
            .iter()
            .filter(|b| **b)
            .count()
            + usize::from(r.field.is_some() || !given.is_empty());
        if shapes != 1 {
            return located(
                span,
                "a condition is exactly one of: all = [...], any = [...], not = {...}, or a field test { field = \"NAME\", OP = VALUE }",
            );
        }
        if let Some(list) = &r.all {
            return Ok(Condition::All(compile_list(list, &span, "all")?));
        }
        if let Some(list) = &r.any {
            return Ok(Condition::Any(compile_list(list, &span, "any")?));
        }
        if let Some(inner) = &r.not {
            return Ok(Condition::Not(Box::new(Condition::compile(inner)?)));
        }
        let Some(names) = &r.field else {
            return located(span, format!("`{}` needs a `field`", given.join("`, `")));
        };
        let names: Vec<Spanned<String>> = match names.get_ref() {
            OneOrMany::One(one) => vec![Spanned::new(names.span(), one.clone())],
            OneOrMany::Many(many) if !many.is_empty() => many
                .iter()
                .map(|n| Spanned::new(names.span(), n.clone()))
                .collect(),
            OneOrMany::Many(_) => return located(names.span(), "`field` needs a name"),
        };
        let mut tests = names
            .iter()
            .map(|name| compile_test(r, name, &given, &span))
            .collect::<Result<Vec<_>, _>>()?;
        // A list of fields: the test holds when it holds for any of them.
        Ok(if tests.len() == 1 {
            tests.remove(0)
        } else {
            Condition::Any(tests)
        })
    }
}

fn compile_test(
    r: &RawCondition,
    name: &Spanned<String>,
    given: &[&str],
    span: &Range<usize>,
) -> Result<Condition, Located> {
    let field = parse_field(name)?;
    let name = name.get_ref().as_str();
    {
        if given.len() != 1 {
            return located(
                span.clone(),
                format!(
                    "a field test takes exactly one operator (eq, ne, lt, le, gt, ge, in, prefix, glob, exists); got {}",
                    if given.is_empty() {
                        "none".to_owned()
                    } else {
                        given.join(", ")
                    }
                ),
            );
        }
        let compare = [
            (&r.eq, Op::Eq),
            (&r.ne, Op::Ne),
            (&r.lt, Op::Lt),
            (&r.le, Op::Le),
            (&r.gt, Op::Gt),
            (&r.ge, Op::Ge),
        ];
        for (value, op) in compare {
            if let Some(value) = value {
                let operand = operand(value, field, name, op)?;
                return Ok(Condition::Compare { field, op, operand });
            }
        }
        if let Some(values) = &r.in_ {
            let values = values
                .get_ref()
                .iter()
                .map(|v| literal(v, field.kind(), name))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Condition::In { field, values });
        }
        let text_only = |what: &str, at: Range<usize>| {
            if matches!(field.kind(), Kind::Str | Kind::List) {
                Ok(())
            } else {
                located(
                    at,
                    format!(
                        "`{what}` needs a string field; `{name}` is {}",
                        field.kind().name()
                    ),
                )
            }
        };
        if let Some(prefixes) = &r.prefix {
            text_only("prefix", prefixes.span())?;
            let prefixes = prefixes
                .get_ref()
                .clone()
                .into_vec()
                .into_iter()
                .map(String::into_bytes)
                .collect();
            return Ok(Condition::Prefix { field, prefixes });
        }
        if let Some(patterns) = &r.glob {
            text_only("glob", patterns.span())?;
            let written = patterns.get_ref().clone().into_vec();
            let literals: Vec<GlobLiterals> = written.iter().map(|p| GlobLiterals::of(p)).collect();
            return Ok(Condition::Glob {
                field,
                globs: glob_set(patterns)?,
                heads: HeadKeys::of(&literals),
                literals,
                patterns: written,
                screen_bit: None,
            });
        }
        match &r.exists {
            Some(exists) => Ok(Condition::Exists {
                field,
                exists: *exists.get_ref(),
            }),
            None => located(span.clone(), "no operator"),
        }
    }
}

impl Condition {
    /// Whether the condition holds for `e`, every test worked out on its own.
    pub fn matches(&self, e: &crate::event::LinkEvent) -> bool {
        self.eval(&mut Facts::new(e, None))
    }

    /// Whether the condition holds for the event of `facts`; glob tests
    /// with a screen bit ask the screen first. Gives the same answer as
    /// `matches` (see rules::tests).
    pub fn eval(&self, facts: &mut Facts<'_, '_>) -> bool {
        match self {
            Condition::All(list) => list.iter().all(|c| c.eval(facts)),
            Condition::Any(list) => list.iter().any(|c| c.eval(facts)),
            Condition::Not(inner) => !inner.eval(facts),
            Condition::Compare { field, op, operand } => {
                let left = facts.get(*field);
                let right = match operand {
                    Operand::Literal(lit) => lit_value(lit),
                    Operand::Field(other) => facts.get(*other),
                };
                compare(left, *op, right)
            }
            Condition::In { field, values } => {
                let value = facts.get(*field);
                values
                    .iter()
                    .any(|lit| compare(value, Op::Eq, lit_value(lit)))
            }
            Condition::Prefix { field, prefixes } => any_str(facts.get(*field), |s| {
                prefixes.iter().any(|p| s.starts_with(p))
            }),
            Condition::Glob {
                field,
                globs,
                literals,
                heads,
                screen_bit,
                ..
            } => {
                let value = facts.get(*field);
                let screened = match (value, screen_bit) {
                    (Value::Str(_), Some(bit)) => facts.may_match(*field, *bit),
                    _ => None,
                };
                any_str(value, |s| {
                    use std::os::unix::ffi::OsStrExt;
                    screened.unwrap_or_else(|| heads.may_match(literals, s))
                        && globs.is_match(std::path::Path::new(std::ffi::OsStr::from_bytes(s)))
                })
            }
            Condition::Exists { field, exists } => (facts.get(*field) != Value::Null) == *exists,
        }
    }

    /// Every glob test in the tree, for the engine to give screen bits to.
    pub fn globs_mut(&mut self, visit: &mut impl FnMut(&mut Condition)) {
        match self {
            Condition::All(list) | Condition::Any(list) => {
                list.iter_mut().for_each(|c| c.globs_mut(visit))
            }
            Condition::Not(inner) => inner.globs_mut(visit),
            Condition::Glob { .. } => visit(self),
            _ => {}
        }
    }
}

fn compile_list(
    list: &[Spanned<RawCondition>],
    span: &Range<usize>,
    what: &str,
) -> Result<Vec<Condition>, Located> {
    if list.is_empty() {
        return located(
            span.clone(),
            format!("`{what}` needs at least one condition"),
        );
    }
    list.iter().map(Condition::compile).collect()
}

fn lit_value(lit: &Literal) -> Value<'_> {
    match lit {
        Literal::Bool(b) => Value::Bool(*b),
        Literal::Int(i) => Value::Int(*i),
        Literal::Str(s) => Value::Str(s),
    }
}

fn any_str(value: Value<'_>, test: impl Fn(&[u8]) -> bool) -> bool {
    match value {
        Value::Str(s) => test(s),
        Value::List(items) => items.iter().any(|i| test(i.as_bytes())),
        _ => false,
    }
}

/// `left OP right`; false when either side is null or the types differ.
fn compare(left: Value<'_>, op: Op, right: Value<'_>) -> bool {
    use std::cmp::Ordering;
    if let Value::List(items) = left {
        let any_eq = items
            .iter()
            .any(|i| compare(Value::Str(i.as_bytes()), Op::Eq, right));
        return match op {
            Op::Eq => any_eq,
            Op::Ne => right != Value::Null && !any_eq,
            _ => false,
        };
    }
    let ordering: Option<Ordering> = match (left, right) {
        (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(&b)),
        (Value::Int(a), Value::Int(b)) => Some(a.cmp(&b)),
        (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
        _ => None,
    };
    let Some(ordering) = ordering else {
        return false;
    };
    match op {
        Op::Eq => ordering.is_eq(),
        Op::Ne => ordering.is_ne(),
        Op::Lt => ordering.is_lt(),
        Op::Le => ordering.is_le(),
        Op::Gt => ordering.is_gt(),
        Op::Ge => ordering.is_ge(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FileInfo, LinkEvent, sample_event};

    fn compile(text: &str) -> Result<Condition, Located> {
        #[derive(Deserialize)]
        struct Wrapper {
            c: Spanned<RawCondition>,
        }
        let w: Wrapper = toml::from_str(&format!("c = {text}")).map_err(|e| Located {
            span: e.span().unwrap_or_default(),
            message: e.message().to_owned(),
        })?;
        Condition::compile(&w.c)
    }

    fn event() -> LinkEvent {
        let mut e = sample_event(Some(b"/etc/shadow"), Some(b"x"), 0);
        e.oldpath.resolved = Some(b"/etc/shadow".to_vec());
        e.process.fsuid = Some(1000);
        e.file = Some(FileInfo::new("stat", "8:1".into(), 42, 0o100640, 0, 42, 1));
        e
    }

    fn holds(text: &str) -> bool {
        compile(text)
            .unwrap_or_else(|e| panic!("{text}: {e:?}"))
            .matches(&event())
    }

    #[test]
    fn equality_and_inequality() {
        assert!(holds(r#"{ field = "comm", eq = "ln" }"#));
        assert!(!holds(r#"{ field = "comm", eq = "cp" }"#));
        assert!(holds(r#"{ field = "comm", ne = "cp" }"#));
        assert!(holds(r#"{ field = "success", eq = true }"#));
        assert!(holds(r#"{ field = "pid", eq = 7 }"#));
        assert!(holds(r#"{ field = "file.setuid", eq = false }"#));
        assert!(holds(r#"{ field = "file.permissions", eq = "0640" }"#));
    }

    #[test]
    fn numeric_comparisons() {
        assert!(holds(r#"{ field = "uid", ge = 1000 }"#));
        assert!(!holds(r#"{ field = "uid", gt = 1000 }"#));
        assert!(holds(r#"{ field = "uid", le = 1000 }"#));
        assert!(holds(r#"{ field = "file.nlink", lt = 2 }"#));
        assert!(holds(r#"{ field = "flags", eq = 0x1400 }"#));
        assert!(holds(r#"{ field = "duration_ns", gt = -1 }"#));
    }

    #[test]
    fn field_to_field_comparison() {
        assert!(holds(r#"{ field = "file.uid", ne = { field = "fsuid" } }"#));
        assert!(holds(
            r#"{ field = "file.gid", eq = { field = "file.ino" } }"#
        ));
        assert!(!holds(
            r#"{ field = "file.uid", eq = { field = "fsuid" } }"#
        ));
    }

    #[test]
    fn prefix_glob_and_sets() {
        assert!(holds(r#"{ field = "oldpath_resolved", prefix = "/etc/" }"#));
        assert!(holds(
            r#"{ field = "oldpath_resolved", prefix = ["/x", "/etc/sh"] }"#
        ));
        assert!(!holds(
            r#"{ field = "newpath_resolved", prefix = "/etc/" }"#
        ));
        assert!(holds(
            r#"{ field = "oldpath_resolved", glob = "/etc/sha*" }"#
        ));
        assert!(holds(
            r#"{ field = "oldpath_resolved", glob = "/**/shadow" }"#
        ));
        // `*` stays within one component.
        assert!(!holds(r#"{ field = "oldpath_resolved", glob = "/*" }"#));
        assert!(holds(r#"{ field = "oldpath_resolved", glob = "/**" }"#));
        assert!(holds(r#"{ field = "comm", in = ["cp", "ln"] }"#));
        assert!(!holds(r#"{ field = "comm", in = ["cp", "mv"] }"#));
        assert!(holds(r#"{ field = "uid", in = [0, 1000] }"#));
        assert!(holds(
            r#"{ field = "oldpath_name", in = ["shadow", "gshadow"] }"#
        ));
    }

    #[test]
    fn glob_literals_never_rule_out_a_match() {
        for (pattern, matching, other) in [
            ("/etc/shadow", "/etc/shadow", "/etc/shadowy"),
            ("/etc/pam.d/**", "/etc/pam.d/a/b", "/etc/pam.conf"),
            (
                "**/authorized_keys",
                "/srv/x/authorized_keys",
                "/srv/x/authorized_keys.bak",
            ),
            ("/home/*/.ssh/**", "/home/a/.ssh/id", "/home/a/src/ssh/id"),
            (
                "/home/*/.config/systemd/user/**",
                "/home/b/.config/systemd/user/x",
                "/home/b/.config/x",
            ),
            ("/a/{b,c}d", "/a/cd", "/b/cd"),
            ("/a/[bc]x", "/a/cx", "/a/cy"),
            ("*.lock", "db.lock", "db.lck"),
            ("/x/*a*a", "/x/aa", "/x/a"),
            ("/a/[]x]y*z", "/a/]yz", "/a/xyq"),
            ("/a/\\*b*c", "/a/*bc", "/a/*bd"),
        ] {
            let literals = GlobLiterals::of(pattern);
            let one = std::slice::from_ref(&literals);
            let heads = HeadKeys::of(one);
            assert!(
                heads.may_match(one, matching.as_bytes()),
                "{pattern} {matching}"
            );
            assert!(!heads.may_match(one, other.as_bytes()), "{pattern} {other}");
            let glob = rule_glob(pattern).unwrap().compile_matcher();
            assert!(glob.is_match(matching), "{pattern} {matching}");
            assert!(
                literals.may_match(matching.as_bytes()),
                "{pattern} {matching}"
            );
            assert!(!glob.is_match(other), "{pattern} {other}");
            assert!(
                !literals.may_match(other.as_bytes()),
                "{pattern} rules out {other}"
            );
        }
    }

    #[test]
    fn runs_after_a_star_are_compared_at_the_next_slash_only_when_their_place_is_fixed() {
        let fixed = |pattern: &str| -> Vec<bool> {
            GlobLiterals::of(pattern)
                .middle
                .iter()
                .map(|m| m.at_next_slash)
                .collect()
        };
        assert_eq!(fixed("/home/*/.ssh/**"), [true]);
        assert_eq!(fixed("/proc/*/task/*/fd/*"), [true, true]);
        assert_eq!(fixed("/a/?*/b/*"), [true]);
        // After a searched run, or a globstar, a class or an escape, the
        // run's place is not fixed; nor is a run that does not start with `/`.
        assert_eq!(fixed("**/ab*/c/*"), [false, false]);
        assert_eq!(fixed("/a/**/b/*/c/*"), [false, false]);
        assert_eq!(fixed("/a/[bc]/d/*"), [false]);
        assert_eq!(fixed("/a/\\*/d/*"), [false]);
        assert_eq!(fixed("/a/*x/d*y"), [false]);

        // Random values over a small alphabet: never ruled out when
        // globset matches them.
        let patterns = [
            "/h/*/s/**",
            "/p/*/t/*/f/*",
            "**/ab*/c",
            "/a/?*/b/*",
            "*/x/*/y",
            "/a*/b?/c",
            "/h/*/.s/**/k",
        ];
        let mut rng = fastrand::Rng::with_seed(11);
        let alphabet = b"/abcfhkpstxy.";
        for pattern in patterns {
            let glob = rule_glob(pattern).unwrap().compile_matcher();
            let literals = GlobLiterals::of(pattern);
            let mut matched = 0;
            for _ in 0..20_000 {
                // The pattern with its wildcards filled at random (slashes
                // included) and a literal byte changed now and then: many
                // matches and near misses.
                let mut value = Vec::new();
                for &b in pattern.as_bytes() {
                    let random = |rng: &mut fastrand::Rng| alphabet[rng.usize(0..alphabet.len())];
                    match b {
                        b'*' => (0..rng.usize(0..4)).for_each(|_| value.push(random(&mut rng))),
                        b'?' => value.push(random(&mut rng)),
                        _ if rng.u8(0..20) == 0 => value.push(random(&mut rng)),
                        _ => value.push(b),
                    }
                }
                let text = String::from_utf8(value).unwrap();
                if glob.is_match(&text) {
                    matched += 1;
                    assert!(literals.may_match(text.as_bytes()), "{pattern} {text}");
                }
            }
            assert!(matched > 0, "{pattern}: no random value matched");
        }
    }

    #[test]
    fn a_globstar_takes_the_slashes_next_to_it() {
        for (pattern, value) in [
            ("**/authorized_keys", "authorized_keys"),
            ("/etc/**/x", "/etc/x"),
            ("/etc/**/x/**/y", "/etc/x/y"),
            ("a/**/b", "a/b"),
        ] {
            let glob = rule_glob(pattern).unwrap().compile_matcher();
            assert!(glob.is_match(value), "globset: {pattern} {value}");
            let literals = GlobLiterals::of(pattern);
            assert!(literals.may_match(value.as_bytes()), "{pattern} {value}");
            let one = std::slice::from_ref(&literals);
            assert!(HeadKeys::of(one).may_match(one, value.as_bytes()));
        }
    }

    #[test]
    fn head_keys_never_rule_out_a_match_of_any_pattern() {
        let patterns = [
            "/etc/shadow",
            "/etc/cron.d/**",
            "/var/spool/cron/**",
            "/home/*/.config/systemd/user/**",
            "/lib/systemd/system/**",
            "/proc/*/fd/*",
            "/a/{b,c}d",
            "/e[tx]c/x",
        ];
        let literals: Vec<GlobLiterals> = patterns.iter().map(|p| GlobLiterals::of(p)).collect();
        let heads = HeadKeys::of(&literals);
        let values = [
            "/etc/shadow",
            "/etc/cron.d/job",
            "/var/spool/cron/root",
            "/home/a/.config/systemd/user/x.service",
            "/lib/systemd/system/a",
            "/proc/1/fd/3",
            "/a/bd",
            "/a/cd",
            "/etc/x",
            "/exc/x",
            "/var/cache/apt/x.deb",
            "/srv/data/x",
            "/usr/bin/x",
            "/e",
            "",
            "/",
        ];
        let mut ruled_out = 0;
        for value in values {
            let matched = patterns
                .iter()
                .any(|p| rule_glob(p).unwrap().compile_matcher().is_match(value));
            let may = heads.may_match(&literals, value.as_bytes());
            assert!(!matched || may, "{value} matches but was ruled out");
            ruled_out += usize::from(!may);
        }
        // "/var/cache/…", "/srv/…", "/usr/…", "/e", "" and "/".
        assert_eq!(ruled_out, 6);
        // A pattern without a literal head (`*.lock`) still gets its turn.
        let loose = [GlobLiterals::of("*.lock"), GlobLiterals::of("/x")];
        assert!(HeadKeys::of(&loose).may_match(&loose, b"a.lock"));
    }

    #[test]
    fn lists_match_any_element() {
        assert!(holds(r#"{ field = "flag_names", eq = "AT_EMPTY_PATH" }"#));
        assert!(!holds(r#"{ field = "flag_names", ne = "AT_EMPTY_PATH" }"#));
        assert!(holds(r#"{ field = "flag_names", ne = "0x8" }"#));
        assert!(holds(
            r#"{ field = "flag_names", in = ["0x8", "AT_SYMLINK_FOLLOW"] }"#
        ));
        assert!(holds(r#"{ field = "flag_names", prefix = "AT_EMPTY" }"#));
    }

    #[test]
    fn null_matches_nothing_but_exists() {
        assert!(!holds(r#"{ field = "new_file.uid", eq = 0 }"#));
        assert!(!holds(r#"{ field = "new_file.uid", ne = 0 }"#));
        assert!(!holds(r#"{ field = "auid", lt = 5 }"#));
        assert!(!holds(r#"{ field = "exe", prefix = "/" }"#));
        assert!(holds(r#"{ field = "new_file.uid", exists = false }"#));
        assert!(holds(r#"{ field = "file.uid", exists = true }"#));
        assert!(holds(r#"{ not = { field = "new_file.uid", eq = 0 } }"#));
        assert!(!holds(r#"{ field = "errno", eq = { field = "exe" } }"#));
    }

    #[test]
    fn boolean_combinators() {
        assert!(holds(
            r#"{ all = [{ field = "comm", eq = "ln" }, { not = { field = "pid", eq = 1 } }] }"#
        ));
        assert!(!holds(
            r#"{ all = [{ field = "comm", eq = "ln" }, { field = "pid", eq = 1 }] }"#
        ));
        assert!(holds(
            r#"{ any = [{ field = "pid", eq = 1 }, { field = "pid", eq = 7 }] }"#
        ));
        assert!(!holds(r#"{ any = [{ field = "pid", eq = 1 }] }"#));
    }

    fn error(text: &str) -> String {
        match compile(text) {
            Ok(_) => panic!("{text} compiled"),
            Err(e) => e.message,
        }
    }

    #[test]
    fn bad_conditions_say_what_is_wrong() {
        assert!(error(r#"{ field = "nope", eq = 1 }"#).starts_with("unknown field `nope`"));
        assert!(error(r#"{ field = "pid", eq = "7" }"#).contains("is an integer, not a string"));
        assert!(error(r#"{ field = "comm", gt = "a" }"#).contains("compare integers only"));
        assert!(error(r#"{ field = "pid", eq = 1, ne = 2 }"#).contains("got eq, ne"));
        assert!(error(r#"{ field = "pid" }"#).contains("got none"));
        assert!(error(r#"{ eq = 1 }"#).contains("needs a `field`"));
        assert!(error(r#"{ field = "pid", prefix = "1" }"#).contains("needs a string field"));
        assert!(error(r#"{ field = "comm", glob = "[" }"#).contains("bad glob `[`"));
        assert!(error(r#"{ field = "pid", eq = 1.5 }"#).contains("a float cannot be compared"));
        assert!(error(r#"{ all = [] }"#).contains("at least one"));
        assert!(
            error(r#"{ all = [{ field = "pid", eq = 1 }], any = [] }"#).contains("exactly one")
        );
        assert!(
            error(r#"{ field = "pid", eq = { field = "comm" } }"#).contains("cannot be compared")
        );
        assert!(error(r#"{ field = "pid", equals = 1 }"#).contains("unknown field `equals`"));
    }

    #[test]
    fn errors_point_at_the_offending_part() {
        let text = r#"{ all = [{ field = "pid", eq = 1 }, { field = "bogus", eq = 1 }] }"#;
        let err = compile(text).unwrap_err();
        assert_eq!(&format!("c = {text}")[err.span], "\"bogus\"");
    }
}
