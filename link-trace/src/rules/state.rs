//! Time windows of stateful rules, keyed by the rule's `group_by` fields
//! and timed by the events' own `boot_ns` (never the wall clock), so a
//! replay of recorded events raises exactly the alerts the live run did.
//!
//! Memory is bounded: at most `MAX_GROUPS` groups per rule (the least
//! recently used one is evicted) and at most `MAX_ENTRIES` events per group
//! (the oldest is dropped); both count as evictions.

use std::{collections::VecDeque, num::NonZeroUsize};

use lru::LruCache;

use super::field::{Field, Value};
use crate::event::LinkEvent;

pub const MAX_GROUPS: usize = 4096;
pub const MAX_ENTRIES: usize = 64;

/// A stateful rule's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub window_ns: u64,
    /// Events (or distinct values of `distinct`) needed within the window.
    pub threshold: usize,
    pub group_by: Vec<Field>,
    pub distinct: Option<Field>,
}

/// A record a window holds, as an alert cites it: its `seq`, and whether
/// it is a context record (their `seq` is a numbering of their own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cited {
    pub seq: u64,
    pub context: bool,
}

impl Cited {
    pub fn of(e: &LinkEvent) -> Cited {
        Cited {
            seq: e.seq,
            context: e.is_context(),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    boot_ns: u64,
    cited: Cited,
    distinct: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Group {
    entries: VecDeque<Entry>,
}

pub struct WindowState {
    groups: LruCache<Vec<u8>, Group>,
    pub evictions: u64,
    /// The key of the event at hand, built here rather than in a fresh Vec:
    /// `then` looks a key up for every successful link, and only a new
    /// group keeps its own copy.
    key: Vec<u8>,
}

impl Default for WindowState {
    fn default() -> Self {
        Self::new(MAX_GROUPS)
    }
}

/// Appends a value to a key, tagged and length-prefixed so that distinct
/// value lists never make the same key.
fn push_key(value: Value<'_>, key: &mut Vec<u8>) {
    match value {
        Value::Null => key.push(0),
        Value::Bool(b) => key.extend_from_slice(&[1, u8::from(b)]),
        Value::Int(i) => {
            key.push(2);
            key.extend_from_slice(&i.to_le_bytes());
        }
        Value::Str(s) => {
            key.push(3);
            key.extend_from_slice(&(s.len() as u64).to_le_bytes());
            key.extend_from_slice(s);
        }
        Value::List(items) => {
            key.push(4);
            key.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                push_key(Value::Str(item.as_bytes()), key);
            }
        }
    }
}

impl WindowState {
    pub fn new(max_groups: usize) -> Self {
        Self {
            groups: LruCache::new(NonZeroUsize::new(max_groups).unwrap_or(NonZeroUsize::MIN)),
            evictions: 0,
            key: Vec::new(),
        }
    }

    /// Sets `self.key` to `e`'s group key.
    fn set_key(&mut self, window: &Window, e: &LinkEvent) {
        self.key.clear();
        for field in &window.group_by {
            push_key(field.get(e), &mut self.key);
        }
    }

    fn prune(group: &mut Group, window_ns: u64, now: u64) {
        while group
            .entries
            .front()
            .is_some_and(|f| now.saturating_sub(f.boot_ns) > window_ns)
        {
            group.entries.pop_front();
        }
    }

    fn reached(window: &Window, group: &Group) -> bool {
        match window.distinct {
            None => group.entries.len() >= window.threshold,
            Some(_) => {
                let mut seen: Vec<&[u8]> = Vec::new();
                for entry in &group.entries {
                    let value = entry.distinct.as_deref().unwrap_or_default();
                    if !seen.contains(&value) {
                        seen.push(value);
                    }
                }
                seen.len() >= window.threshold
            }
        }
    }

    /// Counts an event that matched the rule's condition. Without `then`,
    /// returns the records of the window once the threshold is reached (and
    /// empties the window); with `then` the group stays primed.
    pub fn count(&mut self, window: &Window, has_then: bool, e: &LinkEvent) -> Option<Vec<Cited>> {
        self.set_key(window, e);
        let distinct = window.distinct.map(|field| {
            let mut value = Vec::new();
            push_key(field.get(e), &mut value);
            value
        });
        let entry = Entry {
            boot_ns: e.boot_ns,
            cited: Cited::of(e),
            distinct,
        };
        let key = self.key.as_slice();
        if self.groups.len() == self.groups.cap().get() && !self.groups.contains(key) {
            // The least recently used group makes room.
            self.evictions += 1;
        }
        let group = self.groups.get_or_insert_mut_ref(key, Group::default);
        Self::prune(group, window.window_ns, e.boot_ns);
        if group.entries.len() >= MAX_ENTRIES {
            group.entries.pop_front();
            self.evictions += 1;
        }
        group.entries.push_back(entry);
        if has_then || !Self::reached(window, group) {
            return None;
        }
        // The window starts afresh.
        Some(group.entries.drain(..).map(|en| en.cited).collect())
    }

    /// An event that matched the rule's `then`: when its group reached the
    /// threshold within the window, returns the window's records followed by
    /// this event, and empties the window.
    pub fn then(&mut self, window: &Window, e: &LinkEvent) -> Option<Vec<Cited>> {
        self.set_key(window, e);
        let group = self.groups.peek_mut(self.key.as_slice())?;
        Self::prune(group, window.window_ns, e.boot_ns);
        if !Self::reached(window, group) {
            return None;
        }
        let mut cited: Vec<Cited> = group.entries.drain(..).map(|en| en.cited).collect();
        cited.push(Cited::of(e));
        Some(cited)
    }

    pub fn groups(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::sample_event;

    /// The sequence numbers of what a window returned.
    fn seqs(cited: Option<Vec<Cited>>) -> Option<Vec<u64>> {
        cited.map(|c| c.into_iter().map(|c| c.seq).collect())
    }

    fn ev(seq: u64, boot_ns: u64, pid: u32) -> LinkEvent {
        let mut e = sample_event(Some(b"a"), Some(b"b"), -1);
        e.seq = seq;
        e.boot_ns = boot_ns;
        e.pid = pid;
        e
    }

    fn window(threshold: usize) -> Window {
        Window {
            window_ns: 1_000,
            threshold,
            group_by: vec![Field::Pid],
            distinct: None,
        }
    }

    #[test]
    fn threshold_within_the_window_fires_once_and_resets() {
        let w = window(3);
        let mut s = WindowState::default();
        assert_eq!(seqs(s.count(&w, false, &ev(1, 0, 1))), None);
        assert_eq!(seqs(s.count(&w, false, &ev(2, 500, 1))), None);
        assert_eq!(
            seqs(s.count(&w, false, &ev(3, 1_000, 1))),
            Some(vec![1, 2, 3])
        );
        assert_eq!(seqs(s.count(&w, false, &ev(4, 1_001, 1))), None);
    }

    #[test]
    fn old_events_fall_out_of_the_window() {
        let w = window(3);
        let mut s = WindowState::default();
        s.count(&w, false, &ev(1, 0, 1));
        s.count(&w, false, &ev(2, 600, 1));
        // seq 1 is now 1001 ns old: out.
        assert_eq!(seqs(s.count(&w, false, &ev(3, 1_001, 1))), None);
        assert_eq!(
            seqs(s.count(&w, false, &ev(4, 1_500, 1))),
            Some(vec![2, 3, 4])
        );
    }

    #[test]
    fn groups_are_separate() {
        let w = window(2);
        let mut s = WindowState::default();
        assert_eq!(seqs(s.count(&w, false, &ev(1, 0, 1))), None);
        assert_eq!(seqs(s.count(&w, false, &ev(2, 1, 2))), None);
        assert_eq!(seqs(s.count(&w, false, &ev(3, 2, 1))), Some(vec![1, 3]));
    }

    #[test]
    fn then_needs_a_primed_group() {
        let w = window(2);
        let mut s = WindowState::default();
        assert_eq!(seqs(s.then(&w, &ev(1, 0, 1))), None);
        s.count(&w, true, &ev(2, 10, 1));
        assert_eq!(
            seqs(s.then(&w, &ev(3, 20, 1))),
            None,
            "one failure is not enough"
        );
        s.count(&w, true, &ev(4, 30, 1));
        assert_eq!(seqs(s.then(&w, &ev(5, 40, 2))), None, "another group");
        assert_eq!(seqs(s.then(&w, &ev(6, 2_000, 1))), None, "too late");
        s.count(&w, true, &ev(7, 3_000, 1));
        s.count(&w, true, &ev(8, 3_001, 1));
        assert_eq!(seqs(s.then(&w, &ev(9, 3_002, 1))), Some(vec![7, 8, 9]));
        assert_eq!(
            seqs(s.then(&w, &ev(10, 3_003, 1))),
            None,
            "the group was reset"
        );
    }

    #[test]
    fn distinct_counts_values_not_events() {
        let w = Window {
            distinct: Some(Field::Uid),
            ..window(2)
        };
        let mut s = WindowState::default();
        let mut a = ev(1, 0, 1);
        a.uid = 10;
        assert_eq!(seqs(s.count(&w, false, &a)), None);
        a.seq = 2;
        assert_eq!(seqs(s.count(&w, false, &a)), None, "same uid again");
        let mut b = ev(3, 5, 1);
        b.uid = 20;
        assert_eq!(seqs(s.count(&w, false, &b)), Some(vec![1, 2, 3]));
    }

    #[test]
    fn groups_and_entries_are_bounded_and_evictions_counted() {
        let w = Window {
            distinct: Some(Field::Uid),
            ..window(1_000)
        };
        let mut s = WindowState::new(4);
        for pid in 0..10 {
            s.count(&w, false, &ev(u64::from(pid), 0, pid));
        }
        assert_eq!((s.groups(), s.evictions), (4, 6));
        let mut s = WindowState::new(4);
        for seq in 0..(MAX_ENTRIES as u64 + 5) {
            s.count(&w, false, &ev(seq, 0, 1));
        }
        assert_eq!(s.evictions, 5);
    }
}
