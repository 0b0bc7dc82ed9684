//! Conditions compiled once more, into closures, for the engine's hot path.
//!
//! `Condition::eval` walks the tree and, for every test, matches on the
//! test's shape, on the field (building a `Value`), on the value's and the
//! operand's types and on the operator: four data-dependent branches per
//! test, ~25 tests per event with the built-in rules. Here each test
//! becomes one closure with its field's `Getter`, its operator and its
//! literal's type fixed when the rules are loaded, and `all`/`any` lists
//! run their cheap tests first. `Condition::eval` stays the reference: the
//! two give the same answer on every event (see the tests here and
//! `screen::tests`).

use std::cmp::Ordering;

use globset::GlobSet;

use super::{
    condition::{Condition, GlobLiterals, HeadKeys, Literal, Op, Operand},
    field::{Getter, Value},
    screen::{Facts, Screens, same_bytes},
};

/// One compiled condition: whether it holds for the event of the facts.
pub type Test = Box<dyn Fn(&Facts<'_, '_>) -> bool + Send + Sync>;

/// Compiles `condition`; its glob tests read the screen bits `screens`
/// gave them (`Screens::build` must have run on the rule).
pub fn compile(condition: &Condition, screens: &Screens) -> Test {
    match condition {
        Condition::All(list) => {
            let tests = cheapest_first(list, screens);
            Box::new(move |f| tests.iter().all(|t| t(f)))
        }
        Condition::Any(list) => {
            let tests = cheapest_first(list, screens);
            Box::new(move |f| tests.iter().any(|t| t(f)))
        }
        Condition::Not(inner) => {
            let inner = compile(inner, screens);
            Box::new(move |f| !inner(f))
        }
        Condition::Compare {
            field,
            op,
            operand: Operand::Literal(lit),
        } => compare_literal(field.getter(), *op, lit),
        Condition::Compare {
            field,
            op,
            operand: Operand::Field(other),
        } => compare_fields(field.getter(), *op, other.getter()),
        Condition::In { field, values } => is_in(field.getter(), values),
        Condition::Prefix { field, prefixes } => {
            let get = field.getter();
            let prefixes = prefixes.clone();
            let test = move |s: &[u8]| {
                prefixes
                    .iter()
                    .any(|p| s.len() >= p.len() && same_bytes(&s[..p.len()], p))
            };
            Box::new(move |f| any_str(get(f.event(), f.context()), &test))
        }
        Condition::Glob {
            field,
            globs,
            literals,
            heads,
            screen_bit,
            ..
        } => {
            let screen = screen_bit.zip(screens.slot(*field));
            glob(field.getter(), globs, literals, heads, screen)
        }
        Condition::Exists { field, exists } => {
            let (get, exists) = (field.getter(), *exists);
            Box::new(move |f| !matches!(get(f.event(), f.context()), Value::Null) == exists)
        }
    }
}

/// A rough relative cost of evaluating `condition`: tests on integers and
/// booleans, then string compares, then globs. `all` and `any` are free of
/// side effects, so the order of their members changes no result.
fn cost(condition: &Condition) -> u32 {
    match condition {
        Condition::All(list) | Condition::Any(list) => list.iter().map(cost).sum(),
        Condition::Not(inner) => cost(inner),
        Condition::Glob { .. } => 16,
        Condition::Compare {
            operand: Operand::Field(_),
            ..
        } => 2,
        Condition::Compare {
            operand: Operand::Literal(Literal::Str(_)),
            ..
        }
        | Condition::Prefix { .. } => 2,
        Condition::In { values, .. } => 1 + values.len() as u32,
        Condition::Compare { .. } | Condition::Exists { .. } => 1,
    }
}

fn cheapest_first(list: &[Condition], screens: &Screens) -> Vec<Test> {
    let mut ordered: Vec<&Condition> = list.iter().collect();
    ordered.sort_by_key(|c| cost(c));
    ordered.into_iter().map(|c| compile(c, screens)).collect()
}

/// `f(s)` for a string, for any element of a list; false for anything else.
#[inline(always)]
fn any_str(value: Value<'_>, f: impl Fn(&[u8]) -> bool) -> bool {
    match value {
        Value::Str(s) => f(s),
        Value::List(items) => items.iter().any(|i| f(i.as_bytes())),
        _ => false,
    }
}

/// A closure per operator, so that the operator is fixed in the code.
macro_rules! by_op {
    ($op:expr, |$o:ident| $make:expr) => {
        match $op {
            Op::Eq => {
                let $o = Ordering::is_eq;
                $make
            }
            Op::Ne => {
                let $o = Ordering::is_ne;
                $make
            }
            Op::Lt => {
                let $o = Ordering::is_lt;
                $make
            }
            Op::Le => {
                let $o = Ordering::is_le;
                $make
            }
            Op::Gt => {
                let $o = Ordering::is_gt;
                $make
            }
            Op::Ge => {
                let $o = Ordering::is_ge;
                $make
            }
        }
    };
}

/// `field OP literal`, as `condition::compare` judges it: false when the
/// field is null or of another type; on a list, `eq` holds when an element
/// equals the literal and `ne` when none does, other operators never.
fn compare_literal(get: Getter, op: Op, lit: &Literal) -> Test {
    match lit.clone() {
        Literal::Int(lit) => by_op!(op, |holds| Box::new(move |f| {
            match get(f.event(), f.context()) {
                Value::Int(v) => holds(v.cmp(&lit)),
                Value::List(_) => op == Op::Ne,
                _ => false,
            }
        })),
        Literal::Bool(lit) => by_op!(op, |holds| Box::new(move |f| {
            match get(f.event(), f.context()) {
                Value::Bool(v) => holds(v.cmp(&lit)),
                Value::List(_) => op == Op::Ne,
                _ => false,
            }
        })),
        Literal::Str(lit) => match op {
            // Equality without an ordering: `same_bytes` rather than memcmp.
            Op::Eq => Box::new(move |f| match get(f.event(), f.context()) {
                Value::Str(s) => same_bytes(s, &lit),
                Value::List(items) => items.iter().any(|i| same_bytes(i.as_bytes(), &lit)),
                _ => false,
            }),
            Op::Ne => Box::new(move |f| match get(f.event(), f.context()) {
                Value::Str(s) => !same_bytes(s, &lit),
                Value::List(items) => !items.iter().any(|i| same_bytes(i.as_bytes(), &lit)),
                _ => false,
            }),
            _ => by_op!(op, |holds| Box::new(move |f| {
                match get(f.event(), f.context()) {
                    Value::Str(s) => holds(s.cmp(lit.as_slice())),
                    _ => false,
                }
            })),
        },
    }
}

/// `field OP other`: false when either is null or their types differ (the
/// two fields are of one kind, never a list: `Condition::compile` sees to it).
fn compare_fields(get: Getter, op: Op, other: Getter) -> Test {
    let same = move |a: Value<'_>, b: Value<'_>| match (a, b) {
        (Value::Str(a), Value::Str(b)) => Some(same_bytes(a, b)),
        (Value::Int(a), Value::Int(b)) => Some(a == b),
        (Value::Bool(a), Value::Bool(b)) => Some(a == b),
        _ => None,
    };
    match op {
        Op::Eq => Box::new(move |f| {
            let (e, c) = (f.event(), f.context());
            same(get(e, c), other(e, c)) == Some(true)
        }),
        Op::Ne => Box::new(move |f| {
            let (e, c) = (f.event(), f.context());
            same(get(e, c), other(e, c)) == Some(false)
        }),
        _ => by_op!(op, |holds| Box::new(move |f| {
            let (e, c) = (f.event(), f.context());
            match (get(e, c), other(e, c)) {
                (Value::Str(a), Value::Str(b)) => holds(a.cmp(b)),
                (Value::Int(a), Value::Int(b)) => holds(a.cmp(&b)),
                (Value::Bool(a), Value::Bool(b)) => holds(a.cmp(&b)),
                _ => false,
            }
        })),
    }
}

/// `field in [...]`: equal to one of the literals (of the field's type).
fn is_in(get: Getter, values: &[Literal]) -> Test {
    let mut ints = Vec::new();
    let mut bools = Vec::new();
    let mut strs = Vec::new();
    for value in values {
        match value {
            Literal::Int(i) => ints.push(*i),
            Literal::Bool(b) => bools.push(*b),
            Literal::Str(s) => strs.push(s.clone()),
        }
    }
    Box::new(move |f| match get(f.event(), f.context()) {
        Value::Int(v) => ints.contains(&v),
        Value::Bool(v) => bools.contains(&v),
        value => any_str(value, |s| strs.iter().any(|lit| same_bytes(s, lit))),
    })
}

/// A glob test. With a screen (`screen`: the test's bit and the field's
/// slot) a string value is looked at by globset only when the screen let
/// it through; otherwise its own head keys and literals rule values out
/// first, as `Condition::eval` does.
fn glob(
    get: Getter,
    globs: &GlobSet,
    literals: &[GlobLiterals],
    heads: &HeadKeys,
    screen: Option<(u32, usize)>,
) -> Test {
    use std::os::unix::ffi::OsStrExt;
    let (globs, literals, heads) = (globs.clone(), literals.to_vec(), heads.clone());
    let is_match =
        move |s: &[u8]| globs.is_match(std::path::Path::new(std::ffi::OsStr::from_bytes(s)));
    match screen {
        Some((bit, slot)) => Box::new(move |f| match get(f.event(), f.context()) {
            Value::Str(s) => f.screened(slot) & (1 << bit) != 0 && is_match(s),
            value => any_str(value, |s| heads.may_match(&literals, s) && is_match(s)),
        }),
        None => Box::new(move |f| {
            any_str(get(f.event(), f.context()), |s| {
                heads.may_match(&literals, s) && is_match(s)
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use toml::Spanned;

    use super::*;
    use crate::rules::{
        condition::RawCondition,
        field::{Field, Kind},
        screen::tests::random_event,
    };

    fn condition(text: &str) -> Condition {
        #[derive(Deserialize)]
        struct Wrapper {
            c: Spanned<RawCondition>,
        }
        let w: Wrapper =
            toml::from_str(&format!("c = {text}")).unwrap_or_else(|e| panic!("{text}: {e}"));
        Condition::compile(&w.c).unwrap_or_else(|e| panic!("{text}: {e:?}"))
    }

    /// Every operator on every field, with literals that some random events
    /// hold and some do not, and every same-kind pair of fields compared.
    fn tests_on_every_field() -> Vec<String> {
        let ints = ["0", "1", "-100", "1000", "4001", "17", "33261", "-1"];
        let strs = [
            "\"\"",
            "\"EPERM\"",
            "\"ok\"",
            "\"linkat\"",
            "\"/etc/shadow\"",
            "\"AT_EMPTY_PATH\"",
            "\"stat\"",
            "\"/usr/bin/dpkg\"",
            "\"regular\"",
        ];
        let prefixes = ["\"/etc/\"", "[\"/tmp/\", \"/x\"]", "\"AT_\"", "\"\""];
        let globs = [
            "\"/etc/**\"",
            "[\"**/shadow*\", \"/tmp/*\"]",
            "\"AT_*\"",
            "\"*\"",
        ];
        let fields: Vec<(String, Kind)> = Field::names()
            .into_iter()
            .map(|n| {
                let kind = Field::parse(&n).map(Field::kind).unwrap_or(Kind::Int);
                (n, kind)
            })
            .collect();
        let mut tests = Vec::new();
        for (name, kind) in &fields {
            let test = |op: &str, value: &str| format!("{{ field = \"{name}\", {op} = {value} }}");
            tests.push(test("exists", "true"));
            tests.push(test("exists", "false"));
            match kind {
                Kind::Int => {
                    for op in ["eq", "ne", "lt", "le", "gt", "ge"] {
                        tests.extend(ints.iter().map(|v| test(op, v)));
                    }
                    tests.push(test("in", "[0, 1000, 4001]"));
                }
                Kind::Bool => {
                    for op in ["eq", "ne"] {
                        tests.extend(["true", "false"].iter().map(|v| test(op, v)));
                    }
                    tests.push(test("in", "[true]"));
                }
                Kind::Str | Kind::List => {
                    for op in ["eq", "ne"] {
                        tests.extend(strs.iter().map(|v| test(op, v)));
                    }
                    tests.push(test("in", "[\"EPERM\", \"AT_EMPTY_PATH\", \"linkat\"]"));
                    tests.extend(prefixes.iter().map(|v| test("prefix", v)));
                    tests.extend(globs.iter().map(|v| test("glob", v)));
                }
            }
            for (other, other_kind) in &fields {
                if other_kind == kind && *kind != Kind::List && other != name {
                    for op in ["eq", "ne", "lt", "ge"] {
                        tests.push(test(op, &format!("{{ field = \"{other}\" }}")));
                    }
                }
            }
        }
        tests
    }

    #[test]
    fn compiled_tests_agree_with_the_reference_on_every_field_and_operator() {
        let texts = tests_on_every_field();
        let mut rng = fastrand::Rng::with_seed(0xc0de);
        // Some trees of them too: all/any/not over random tests.
        let mut all = texts.clone();
        for _ in 0..2_000 {
            let mut pick = || texts[rng.usize(0..texts.len())].clone();
            let (a, b, c) = (pick(), pick(), pick());
            all.push(match rng.u8(0..3) {
                0 => format!("{{ all = [{a}, {{ not = {b} }}, {c}] }}"),
                1 => format!("{{ any = [{a}, {b}, {{ all = [{c}, {a}] }}] }}"),
                _ => format!("{{ not = {{ any = [{a}, {b}] }} }}"),
            });
        }
        let conditions: Vec<(Condition, Test)> = all
            .iter()
            .map(|text| {
                let c = condition(text);
                let test = compile(&c, &Screens::default());
                (c, test)
            })
            .collect();
        let events: Vec<_> = (0..400).map(|seq| random_event(&mut rng, seq)).collect();
        let mut held = vec![0usize; conditions.len()];
        for e in &events {
            let facts = Facts::new(e, None);
            for (index, (reference, compiled)) in conditions.iter().enumerate() {
                let expected = reference.matches(e);
                assert_eq!(compiled(&facts), expected, "{}: {e:?}", all[index]);
                held[index] += usize::from(expected);
            }
        }
        // The events tell the tests apart: many tests hold for some events
        // and not for others (a third of them here; most field-to-field
        // pairs hold never or always).
        let mixed = held.iter().filter(|&&n| n > 0 && n < events.len()).count();
        assert!(
            mixed * 3 > conditions.len(),
            "{mixed} of {}",
            conditions.len()
        );
    }
}
