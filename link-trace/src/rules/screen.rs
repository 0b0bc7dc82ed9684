//! What the engine works out once per event instead of once per test.
//!
//! `Facts` is one event as the conditions read it: whether it is a context
//! record (a string compare `Field::get` would otherwise repeat for every
//! field it reads) and, per string field a glob test looked at, which glob
//! tests may match that value.
//!
//! The built-in path rules test the same four path fields against some 40
//! patterns, rule after rule. `GlobScreen` holds every distinct pattern of
//! every glob test in force once, with the tests that use it; a value goes
//! through it once per event and comes out with the set of tests that may
//! match it (a superset: `GlobLiterals::may_match` never rules out a
//! match). A test outside that set is false without looking further; one
//! inside it still asks globset, so results are those of globset alone.

use super::{
    Rule,
    condition::{Condition, GlobLiterals},
    field::{Field, Value},
};
use crate::event::LinkEvent;

/// Glob tests beyond this many (in rule order), and tests on string fields
/// beyond `SCREENED_FIELDS`, are not screened; they check their own
/// patterns as `Condition::matches` does.
pub const MAX_SCREENED: u32 = u128::BITS;
/// Fields with a screen of their own: the built-in rules glob five.
pub const SCREENED_FIELDS: usize = 8;

/// The first `len` (at most 8) bytes of `bytes`, zero-padded, as one u64.
/// A byte loop rather than `copy_from_slice`, which calls memcpy for a
/// length not known at compile time.
pub(super) fn prefix_key(bytes: &[u8], len: usize) -> u64 {
    if len >= 8 && bytes.len() >= 8 {
        let mut key = [0u8; 8];
        key.copy_from_slice(&bytes[..8]);
        return u64::from_le_bytes(key);
    }
    let mut key = 0u64;
    for (i, &b) in bytes.iter().take(len.min(8)).enumerate() {
        key |= u64::from(b) << (8 * i);
    }
    key
}

/// Whether `a` and `b` hold the same bytes, compared inline in words.
/// Written out because slice `==` calls libc's memcmp, and in a live
/// profile those calls (a dozen short compares per event, from the glob
/// screens) took far more time than their instruction count suggests.
#[inline]
pub(super) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |x: &[u8; 8]| u64::from_le_bytes(*x);
    let half = |x: &[u8; 4]| u32::from_le_bytes(*x);
    if let (Some(a_last), Some(b_last)) = (a.last_chunk::<8>(), b.last_chunk::<8>()) {
        // Whole words, then the last 8 bytes (overlapping the words).
        let (a8, b8) = (a.as_chunks::<8>().0, b.as_chunks::<8>().0);
        return a8.iter().zip(b8).all(|(x, y)| word(x) == word(y)) && word(a_last) == word(b_last);
    }
    if let (Some(a_first), Some(b_first)) = (a.first_chunk::<4>(), b.first_chunk::<4>()) {
        // 4 to 7 bytes: the first 4 and the last 4.
        let (a_last, b_last) = (a.last_chunk::<4>(), b.last_chunk::<4>());
        return half(a_first) == half(b_first) && a_last.map(half) == b_last.map(half);
    }
    a.iter().zip(b).all(|(x, y)| x == y)
}

/// One distinct pattern and the glob tests that name it.
#[derive(Debug, Clone)]
struct Screened {
    /// The first `key_len` bytes of the pattern's literal head.
    key: u64,
    key_len: usize,
    /// The last `tail_len` bytes (at most 8) of the literal tail: values
    /// whose end differs are ruled out without a call.
    tail_key: u64,
    tail_len: usize,
    literals: GlobLiterals,
    /// One bit per glob test (`Condition::Glob::screen_bit`).
    tests: u128,
}

/// The distinct patterns of the glob tests on one field.
#[derive(Debug, Clone, Default)]
pub struct GlobScreen {
    /// Sorted by key length, then key.
    patterns: Vec<Screened>,
    /// The patterns' keys, in the same order: bisected without touching
    /// the rest of each pattern.
    keys: Vec<u64>,
    /// Each key length in use and where its patterns end in `patterns`:
    /// a value's key is made once per length and looked up by bisection.
    lengths: Vec<(usize, usize)>,
}

impl GlobScreen {
    fn add(&mut self, pattern: &GlobLiterals, test: u32, written: &str, seen: &mut Vec<String>) {
        let index = match seen.iter().position(|p| p == written) {
            Some(index) => index,
            None => {
                let head = pattern.head();
                let key_len = head.len().min(8);
                let tail = pattern.tail();
                let tail_len = tail.len().min(8);
                self.patterns.push(Screened {
                    key: prefix_key(head, key_len),
                    key_len,
                    tail_key: prefix_key(&tail[tail.len() - tail_len..], tail_len),
                    tail_len,
                    literals: pattern.clone(),
                    tests: 0,
                });
                seen.push(written.to_owned());
                self.patterns.len() - 1
            }
        };
        self.patterns[index].tests |= 1 << test;
    }

    fn seal(&mut self) {
        self.patterns.sort_by_key(|p| (p.key_len, p.key));
        for (index, pattern) in self.patterns.iter().enumerate() {
            match self.lengths.last_mut() {
                Some((len, end)) if *len == pattern.key_len => *end = index + 1,
                _ => self.lengths.push((pattern.key_len, index + 1)),
            }
        }
        self.keys = self.patterns.iter().map(|p| p.key).collect();
    }

    /// The glob tests that may match `value`: every test one of whose
    /// patterns `value` may match.
    pub fn may_match(&self, value: &[u8]) -> u128 {
        let mut tests = 0u128;
        let mut start = 0;
        // The value's key for every length: the first 8 bytes, masked.
        let first_bytes = prefix_key(value, 8);
        for &(len, end) in &self.lengths {
            let range = start..end;
            start = end;
            if value.len() < len {
                continue;
            }
            let key = match len {
                8.. => first_bytes,
                _ => first_bytes & ((1u64 << (8 * len)) - 1),
            };
            let keys = &self.keys[range.clone()];
            let first = keys.partition_point(|&k| k < key);
            let same_key = keys[first..].iter().take_while(|&&k| k == key).count();
            let at = range.start + first;
            for pattern in &self.patterns[at..at + same_key] {
                let tail_len = pattern.tail_len;
                let tail_fits = tail_len == 0
                    || (value.len() >= tail_len
                        && prefix_key(&value[value.len() - tail_len..], tail_len)
                            == pattern.tail_key);
                if tail_fits && pattern.tests & !tests != 0 && pattern.literals.may_match(value) {
                    tests |= pattern.tests;
                }
            }
        }
        tests
    }
}

/// The screens of the rules in force, one per globbed string field, and
/// what each rule needs of them.
#[derive(Debug, Clone, Default)]
pub struct Screens {
    fields: Vec<(Field, GlobScreen)>,
    /// Per field slot, per screen bit: the rules (one bit each, in rule
    /// order) whose condition can hold only if one of some screened glob
    /// tests may match, and that test is one of them.
    test_rules: Vec<Vec<u128>>,
    /// The rules (of the first 128) that need one of some screened tests:
    /// skipped when none of those may match. Other rules are always judged.
    screened_rules: u128,
}

/// The screen bits of the glob tests `condition` cannot hold without
/// (one of them at least), if there is such a set.
fn required_tests(condition: &Condition) -> Option<u128> {
    match condition {
        Condition::Glob { screen_bit, .. } => screen_bit.map(|bit| 1u128 << bit),
        Condition::Any(list) => list
            .iter()
            .try_fold(0u128, |tests, c| required_tests(c).map(|t| tests | t)),
        Condition::All(list) => list.iter().find_map(required_tests),
        _ => None,
    }
}

impl Screens {
    /// The slot of `field`'s screen (`Facts::screened`), if it has one.
    pub fn slot(&self, field: Field) -> Option<usize> {
        self.fields.iter().position(|(f, _)| *f == field)
    }

    /// Gives the glob tests of `rules` (condition, then `then`) their
    /// screen bits, in rule order, and builds a screen per field over
    /// their patterns.
    pub fn build(rules: &mut [Rule]) -> Screens {
        let mut screens = Screens::default();
        let mut seen: Vec<Vec<String>> = Vec::new();
        let mut on_field: Vec<u128> = Vec::new();
        let mut next_bit = 0u32;
        for rule in rules.iter_mut() {
            let conditions = std::iter::once(&mut rule.condition).chain(rule.then.as_mut());
            for condition in conditions {
                condition.globs_mut(&mut |test| {
                    let Condition::Glob {
                        field,
                        patterns,
                        literals,
                        screen_bit,
                        ..
                    } = test
                    else {
                        return;
                    };
                    *screen_bit = None;
                    let slot = match screens.fields.iter().position(|(f, _)| f == field) {
                        Some(slot) => slot,
                        None if screens.fields.len() < SCREENED_FIELDS => {
                            screens.fields.push((*field, GlobScreen::default()));
                            seen.push(Vec::new());
                            on_field.push(0);
                            screens.fields.len() - 1
                        }
                        None => return,
                    };
                    if next_bit >= MAX_SCREENED {
                        return;
                    }
                    let bit = next_bit;
                    next_bit += 1;
                    *screen_bit = Some(bit);
                    on_field[slot] |= 1 << bit;
                    for (written, literal) in patterns.iter().zip(literals.iter()) {
                        screens.fields[slot]
                            .1
                            .add(literal, bit, written, &mut seen[slot]);
                    }
                });
            }
        }
        for (_, screen) in &mut screens.fields {
            screen.seal();
        }
        screens.test_rules = vec![vec![0; MAX_SCREENED as usize]; screens.fields.len()];
        for (index, rule) in rules.iter().enumerate() {
            let required = required_tests(&rule.condition).filter(|_| index < u128::BITS as usize);
            let Some(tests) = required else {
                continue;
            };
            screens.screened_rules |= 1 << index;
            for (slot, on) in on_field.iter().enumerate() {
                for bit in 0..MAX_SCREENED {
                    if on & tests & (1 << bit) != 0 {
                        screens.test_rules[slot][bit as usize] |= 1 << index;
                    }
                }
            }
        }
        screens
    }
}

/// One event as the rules read it.
pub struct Facts<'e, 's> {
    event: &'e LinkEvent,
    context: bool,
    screens: Option<&'s Screens>,
    /// Per screened field: the glob tests its value may match (none when
    /// it is null, all when it is a list).
    screened: [u128; SCREENED_FIELDS],
    /// The rules that may hold (`Screens::test_rules`), one bit each.
    possible_rules: u128,
}

impl<'e, 's> Facts<'e, 's> {
    /// Without screens, every glob test checks its own patterns. With
    /// them, every screened field goes through its screen here, once: the
    /// built-in rules need all of them for nearly every event anyway, and
    /// one pass leaves `may_hold` a bit test per rule.
    pub fn new(event: &'e LinkEvent, screens: Option<&'s Screens>) -> Self {
        let context = event.is_context();
        let mut screened = [0u128; SCREENED_FIELDS];
        let mut possible_rules = u128::MAX;
        if let Some(screens) = screens {
            possible_rules = !screens.screened_rules;
            for (slot, (field, screen)) in screens.fields.iter().enumerate() {
                let tests = match field.get_in(event, context) {
                    Value::Str(s) => screen.may_match(s),
                    Value::List(_) => u128::MAX,
                    _ => 0,
                };
                screened[slot] = tests;
                let mut bits = tests;
                while bits != 0 {
                    possible_rules |= screens.test_rules[slot][bits.trailing_zeros() as usize];
                    bits &= bits - 1;
                }
            }
        }
        Facts {
            event,
            context,
            screens,
            screened,
            possible_rules,
        }
    }

    pub fn get(&self, field: Field) -> Value<'e> {
        field.get_in(self.event, self.context)
    }

    /// Whether the glob test with screen bit `bit` on `field` may match
    /// (`field`'s value is a string); None without screens.
    pub fn may_match(&self, field: Field, bit: u32) -> Option<bool> {
        let screens = self.screens?;
        let slot = screens.fields.iter().position(|(f, _)| *f == field)?;
        Some(self.screened[slot] & (1 << bit) != 0)
    }

    pub fn event(&self) -> &'e LinkEvent {
        self.event
    }

    /// Whether the event is a context record (for a `Getter`).
    pub fn context(&self) -> bool {
        self.context
    }

    /// The glob tests the value of the field in screen slot `slot` may
    /// match (`Screens::slot`).
    pub fn screened(&self, slot: usize) -> u128 {
        self.screened[slot]
    }

    /// False when rule number `rule`'s condition cannot hold: none of the
    /// glob tests it needs one of may match.
    pub fn may_hold(&self, rule: usize) -> bool {
        rule >= u128::BITS as usize || self.possible_rules & (1 << rule) != 0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        event::{AlertRecord, FileInfo, PathField},
        rules::{Engine, RuleSet, tests::Ev},
    };

    /// The engine as it runs: glob tests screened.
    fn screened() -> Engine {
        Engine::new(RuleSet::builtin().expect("built-in rules compile"))
    }

    /// The same rules walked by `Condition::eval` (not compiled), with
    /// every glob test checking its own patterns, as `Condition::matches`
    /// does.
    fn plain() -> Engine {
        let mut engine = screened();
        for rule in &mut engine.rules {
            let conditions = std::iter::once(&mut rule.condition).chain(rule.then.as_mut());
            for condition in conditions {
                condition.globs_mut(&mut |test| {
                    if let Condition::Glob { screen_bit, .. } = test {
                        *screen_bit = None;
                    }
                });
            }
        }
        engine.screens = Screens::default();
        engine.reference = true;
        engine
    }

    const PATHS: &[&str] = &[
        "/etc/shadow",
        "/etc/shadow-",
        "/etc/shadowx",
        "/etc/gshadow",
        "/etc/passwd",
        "/etc/group-",
        "/etc/sudoers",
        "/etc/sudoers.d/90-x",
        "/etc/sudoers.dx",
        "/etc/pam.d/sshd",
        "/etc/security/limits.conf",
        "/etc/ssh/sshd_config",
        "/root/.ssh/id_rsa",
        "/home/alice/.ssh/authorized_keys",
        "/home/alice/x/.ssh/y",
        "/srv/authorized_keys2",
        "/srv/authorized_keys3",
        "authorized_keys",
        "/etc/ld.so.preload",
        "/etc/ld.so.conf.d/a.conf",
        "/etc/crontab",
        "/etc/cron.daily/x",
        "/var/spool/cron/crontabs/root",
        "/var/spool/cronx",
        "/etc/systemd/system/x.service",
        "/home/bob/.config/systemd/user/y.service",
        "/home/bob/.config/systemd/userx",
        "/lib/systemd/system/z",
        "/proc/123/fd/4",
        "/proc/1/task/2/fd/3",
        "/proc/self/fd",
        "/dev/fd/9",
        "/tmp/x",
        "/tmp/a.lock",
        "/tmp/lock",
        "/var/tmp/b.lck",
        "/dev/shm/c.LCK",
        "/tmp/d.lock.1",
        "/tmp/",
        "/var/cache/apt/archives/pkg.deb",
        "/home/builder/src/x.rlib",
        "/",
        "",
        "/e",
        "/etc",
        "/etc/",
        "/tmp/\u{ff}\n",
    ];

    /// A random event, hostile bytes included: any syscall, path (or
    /// none), caller, result, flags, file facts and canonical path.
    pub(crate) fn random_event(rng: &mut fastrand::Rng, seq: u64) -> LinkEvent {
        let path = |rng: &mut fastrand::Rng| -> Vec<u8> {
            let mut p = rng.choice(PATHS).unwrap_or(&"/").as_bytes().to_vec();
            match rng.u8(0..10) {
                0 => p.push(0xff),
                1 => p.extend_from_slice(b"/.."),
                2 => p.splice(0..0, b"/x".iter().copied()).for_each(drop),
                _ => {}
            }
            p
        };
        let (old, new) = (path(rng), path(rng));
        let mut ev = Ev::new(seq, "/a", "/b")
            .at_ms(seq * rng.u64(0..400))
            .caller(
                4_000 + rng.u32(0..3),
                *rng.choice(&[0, 1000, 1001]).unwrap_or(&0),
            );
        if rng.bool() {
            ev = ev.failed(*rng.choice(&[1, 17, 13]).unwrap_or(&1));
        }
        if rng.u8(0..3) == 0 {
            ev = ev.exe(
                rng.choice(["/usr/bin/dpkg", "/usr/bin/rpm", "/bin/sh"])
                    .unwrap_or(""),
            );
        }
        let mode = *rng
            .choice(&[0o100644, 0o104755, 0o102755, 0o100600])
            .unwrap_or(&0o100644);
        ev = ev.file(*rng.choice(&[0, 1000, 1001]).unwrap_or(&0), mode);
        ev = ev.flags(*rng.choice(&[0, 0x400, 0x1000, 0x1400]).unwrap_or(&0));
        let mut e = ev.0;
        e.oldpath.resolved = (rng.u8(0..8) != 0).then(|| old.clone());
        e.newpath.resolved = (rng.u8(0..8) != 0).then(|| new.clone());
        e.oldpath.canonical = match rng.u8(0..3) {
            0 => None,
            1 => e.oldpath.resolved.clone(),
            _ => Some(path(rng)),
        };
        e.newpath.canonical = match rng.u8(0..3) {
            0 => None,
            1 => e.newpath.resolved.clone(),
            _ => Some(path(rng)),
        };
        e.args_changed = rng.u8(0..10) == 0;
        e.inode_mismatch = [None, Some(false), Some(true)][rng.usize(0..3)];
        if e.inode_mismatch == Some(true) && rng.bool() {
            e.inode_mismatch_explained_by =
                Some(Box::new(crate::event::MismatchExplanation::of(&e)));
        }
        if rng.u8(0..5) == 0 {
            e.file = None;
        }
        if rng.u8(0..5) == 0 {
            e.new_file = Some(FileInfo::new("stat", "8:1".into(), 43, mode, 0, 0, 1));
        }
        e.syscall = *rng
            .choice(&[
                "link",
                "linkat",
                "linkat",
                "unlink",
                "unlinkat",
                "rename",
                "renameat",
                "renameat2",
            ])
            .unwrap_or(&"linkat");
        if !e.has_newpath() {
            e.newpath = PathField::new(None, false, None);
            e.newpath.resolution = "none";
        }
        e
    }

    #[test]
    fn same_bytes_agrees_with_slice_equality() {
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..20_000 {
            let a: Vec<u8> = (0..rng.usize(0..40)).map(|_| rng.u8(0..3)).collect();
            let mut b = a.clone();
            match rng.u8(0..4) {
                0 => b.push(rng.u8(0..3)),
                1 if !b.is_empty() => {
                    let at = rng.usize(0..b.len());
                    b[at] = rng.u8(0..3);
                }
                2 => b.truncate(rng.usize(0..=b.len())),
                _ => {}
            }
            assert_eq!(same_bytes(&a, &b), a == b, "{a:?} {b:?}");
        }
    }

    #[test]
    fn screened_evaluation_raises_exactly_the_alerts_of_plain_evaluation() {
        let (mut fast, mut slow) = (screened(), plain());
        assert!(fast.rules.iter().all(|r| !matches!(
            r.condition,
            Condition::Glob {
                screen_bit: None,
                ..
            }
        )),);
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let (mut fast_alerts, mut slow_alerts): (Vec<AlertRecord>, Vec<AlertRecord>) =
            (Vec::new(), Vec::new());
        let mut fired: Vec<String> = Vec::new();
        for seq in 0..40_000 {
            let e = random_event(&mut rng, seq);
            fast.evaluate(&e, &mut fast_alerts);
            slow.evaluate(&e, &mut slow_alerts);
            assert_eq!(fast_alerts, slow_alerts, "event {seq}: {e:?}");
            fired.extend(fast_alerts.drain(..).map(|a| a.rule_id));
            slow_alerts.clear();
        }
        for rule in fast.rules() {
            let times = fired.iter().filter(|id| **id == rule.id).count();
            assert!(
                times > 0,
                "{} never fired: the test events miss it",
                rule.id
            );
        }
        assert_eq!(fast.alerts_raised, slow.alerts_raised);
    }

    #[test]
    fn the_screen_never_rules_out_a_value_a_test_matches() {
        let engine = screened();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut values: Vec<Vec<u8>> = PATHS.iter().map(|p| p.as_bytes().to_vec()).collect();
        for _ in 0..5_000 {
            let mut v = rng.choice(PATHS).unwrap_or(&"").as_bytes().to_vec();
            let cut = rng.usize(0..=v.len());
            v.truncate(cut);
            v.extend_from_slice(rng.choice(PATHS).unwrap_or(&"").as_bytes());
            values.push(v);
        }
        let mut screened_out = 0;
        for value in &values {
            for rule in engine.rules() {
                let mut condition = rule.condition.clone();
                condition.globs_mut(&mut |test| {
                    let Condition::Glob {
                        field,
                        globs,
                        screen_bit,
                        ..
                    } = test
                    else {
                        return;
                    };
                    let (_, screen) = engine
                        .screens
                        .fields
                        .iter()
                        .find(|(f, _)| f == field)
                        .expect("every globbed field has a screen");
                    let tests = screen.may_match(value);
                    use std::os::unix::ffi::OsStrExt;
                    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(value));
                    let bit = screen_bit.expect("every built-in glob test is screened");
                    let may = tests & (1 << bit) != 0;
                    assert!(!globs.is_match(path) || may, "{value:?} ruled out of {bit}");
                    screened_out += usize::from(!may);
                });
            }
        }
        // The screen is worth its keep only if it rules most tests out.
        assert!(screened_out > values.len() * 20, "{screened_out}");
    }
}
