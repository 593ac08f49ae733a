//! The pure diff of two snapshots: who appeared, vanished, reappeared or changed.
//!
//! This module does no I/O. It works on anything that implements [`Side`] (an Arrow-backed
//! snapshot in production, a plain slice in property tests), matches accounts by
//! `account_id`, and compares only the fields an auditor cares about ([`COMPARED_FIELDS`]).
//! A keyed 64-bit fingerprint of those fields lets unchanged accounts (the vast majority) be
//! skipped without materialising them. Different fingerprints are confirmed field by field,
//! so a reported change is always real; equal fingerprints are trusted, and the chance that
//! a changed account hashes equal is about 2⁻⁶⁴ (the key is random per diff, so no input can
//! be crafted to collide). The second snapshot is fed in batches ([`DiffBuilder`]), so only
//! the first is ever held whole.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

/// The compared columns, in the order they appear in `before` / `after` JSON.
pub const COMPARED_FIELDS: [&str; 11] = [
    "status",
    "account_status",
    "membership_status",
    "claim_status",
    "is_managed",
    "email",
    "name",
    "nickname",
    "platform_roles",
    "mfa_enabled",
    "management_source",
];

/// The values of the compared fields of one account. `platform_roles` is kept sorted and
/// de-duplicated, so it compares as a set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Compared {
    /// `status`.
    pub status: Option<String>,
    /// `account_status`.
    pub account_status: Option<String>,
    /// `membership_status`.
    pub membership_status: Option<String>,
    /// `claim_status`.
    pub claim_status: Option<String>,
    /// `is_managed`.
    pub is_managed: Option<bool>,
    /// `email`.
    pub email: Option<String>,
    /// `name`.
    pub name: Option<String>,
    /// `nickname`.
    pub nickname: Option<String>,
    /// `platform_roles`, sorted and de-duplicated.
    pub platform_roles: Option<Vec<String>>,
    /// `mfa_enabled`.
    pub mfa_enabled: Option<bool>,
    /// `management_source`.
    pub management_source: Option<String>,
}

impl Compared {
    /// Sorts and de-duplicates `platform_roles`.
    pub fn normalised(mut self) -> Compared {
        if let Some(roles) = &mut self.platform_roles {
            roles.sort();
            roles.dedup();
        }
        self
    }

    /// Names of the fields that differ, in [`COMPARED_FIELDS`] order.
    pub fn changed_fields(&self, other: &Compared) -> Vec<&'static str> {
        let checks = [
            self.status != other.status,
            self.account_status != other.account_status,
            self.membership_status != other.membership_status,
            self.claim_status != other.claim_status,
            self.is_managed != other.is_managed,
            self.email != other.email,
            self.name != other.name,
            self.nickname != other.nickname,
            self.platform_roles != other.platform_roles,
            self.mfa_enabled != other.mfa_enabled,
            self.management_source != other.management_source,
        ];
        COMPARED_FIELDS
            .iter()
            .zip(checks)
            .filter(|(_, differs)| *differs)
            .map(|(f, _)| *f)
            .collect()
    }

    /// The fields as a JSON object (keys in [`COMPARED_FIELDS`] order).
    pub fn to_json(&self) -> String {
        // Strings, booleans and lists of strings always serialise.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One snapshot (or one batch of one) as the diff sees it.
pub trait Side {
    /// Number of accounts.
    fn len(&self) -> usize;
    /// True when there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The `i`-th account ID.
    fn account_id(&self, i: usize) -> &str;
    /// The `i`-th account's compared fields.
    fn compared(&self, i: usize) -> Compared;
    /// A hash of the `i`-th account's compared fields: equal fields must give equal hashes
    /// on both sides of one diff (both sides use the same keyed hasher).
    fn fingerprint(&self, i: usize) -> u64;
}

impl Side for [(String, Compared)] {
    fn len(&self) -> usize {
        <[_]>::len(self)
    }
    fn account_id(&self, i: usize) -> &str {
        &self[i].0
    }
    fn compared(&self, i: usize) -> Compared {
        self[i].1.clone()
    }
    fn fingerprint(&self, i: usize) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self[i].1.hash(&mut h);
        h.finish()
    }
}

/// What happened to an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeType {
    /// Absent from the previous snapshot and from every earlier one.
    Appeared,
    /// Present in the previous snapshot, absent now.
    Vanished,
    /// Absent from the previous snapshot but present in some earlier one.
    Reappeared,
    /// Present in both with different compared fields.
    Changed,
}

impl ChangeType {
    /// The `change_type` column value.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeType::Appeared => "appeared",
            ChangeType::Vanished => "vanished",
            ChangeType::Reappeared => "reappeared",
            ChangeType::Changed => "changed",
        }
    }

    /// All four, in report order.
    pub const ALL: [ChangeType; 4] = [
        ChangeType::Appeared,
        ChangeType::Vanished,
        ChangeType::Reappeared,
        ChangeType::Changed,
    ];
}

/// One row of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The account.
    pub account_id: String,
    /// What happened.
    pub change_type: ChangeType,
    /// For `changed`: the fields that differ.
    pub changed_fields: Vec<&'static str>,
    /// The compared fields before (`None` for appeared and reappeared).
    pub before: Option<Compared>,
    /// The compared fields now (`None` for vanished).
    pub after: Option<Compared>,
}

impl Change {
    /// The current values, or the last known ones for `vanished`.
    pub fn current(&self) -> &Compared {
        self.after
            .as_ref()
            .or(self.before.as_ref())
            .unwrap_or(&EMPTY)
    }
}

static EMPTY: Compared = Compared {
    status: None,
    account_status: None,
    membership_status: None,
    claim_status: None,
    is_managed: None,
    email: None,
    name: None,
    nickname: None,
    platform_roles: None,
    mfa_enabled: None,
    management_source: None,
};

/// The changes from one snapshot to another, sorted by account ID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Difference {
    /// The rows.
    pub changes: Vec<Change>,
}

impl Difference {
    /// Rows of one type.
    pub fn count(&self, t: ChangeType) -> usize {
        self.changes.iter().filter(|c| c.change_type == t).count()
    }

    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The difference in the other direction (appeared ↔ vanished, before ↔ after), as
    /// `diff(b, a)` would give when no earlier snapshot exists.
    pub fn flip(&self) -> Difference {
        let mut changes: Vec<Change> = self
            .changes
            .iter()
            .map(|c| Change {
                account_id: c.account_id.clone(),
                change_type: match c.change_type {
                    ChangeType::Appeared | ChangeType::Reappeared => ChangeType::Vanished,
                    ChangeType::Vanished => ChangeType::Appeared,
                    ChangeType::Changed => ChangeType::Changed,
                },
                changed_fields: c.changed_fields.clone(),
                before: c.after.clone(),
                after: c.before.clone(),
            })
            .collect();
        changes.sort_by(|a, b| a.account_id.cmp(&b.account_id));
        Difference { changes }
    }
}

/// Builds a [`Difference`] from a `before` side held in memory and an `after` side fed in
/// batches, so the second snapshot never has to be held whole.
pub struct DiffBuilder<'a, A: Side + ?Sized> {
    before: &'a A,
    index: HashMap<&'a str, u32>,
    matched: Vec<bool>,
    changes: Vec<Change>,
}

impl<'a, A: Side + ?Sized> DiffBuilder<'a, A> {
    /// Indexes `before` by account ID.
    pub fn new(before: &'a A) -> Self {
        let mut index: HashMap<&str, u32> = HashMap::with_capacity(before.len());
        for i in 0..before.len() {
            index.insert(before.account_id(i), i as u32);
        }
        DiffBuilder {
            before,
            index,
            matched: vec![false; before.len()],
            changes: Vec::new(),
        }
    }

    /// Compares one batch of the `after` side.
    pub fn push<B: Side + ?Sized>(&mut self, after: &B) {
        for j in 0..after.len() {
            let id = after.account_id(j);
            match self.index.get(id) {
                Some(&i) => {
                    let i = i as usize;
                    self.matched[i] = true;
                    if self.before.fingerprint(i) == after.fingerprint(j) {
                        continue;
                    }
                    let (b, a) = (self.before.compared(i), after.compared(j));
                    let fields = b.changed_fields(&a);
                    if !fields.is_empty() {
                        self.changes.push(Change {
                            account_id: id.to_owned(),
                            change_type: ChangeType::Changed,
                            changed_fields: fields,
                            before: Some(b),
                            after: Some(a),
                        });
                    }
                }
                None => self.changes.push(Change {
                    account_id: id.to_owned(),
                    change_type: ChangeType::Appeared,
                    changed_fields: Vec::new(),
                    before: None,
                    after: Some(after.compared(j)),
                }),
            }
        }
    }

    /// Adds the accounts of `before` that never came up as vanished, and sorts. Accounts
    /// absent from `before` are `appeared` here; see [`Difference::mark_reappeared`].
    pub fn finish(mut self) -> Difference {
        for (i, seen) in self.matched.iter().enumerate() {
            if !seen {
                self.changes.push(Change {
                    account_id: self.before.account_id(i).to_owned(),
                    change_type: ChangeType::Vanished,
                    changed_fields: Vec::new(),
                    before: Some(self.before.compared(i)),
                    after: None,
                });
            }
        }
        self.changes.sort_by(|a, b| a.account_id.cmp(&b.account_id));
        Difference {
            changes: self.changes,
        }
    }
}

impl Difference {
    /// IDs of the `appeared` rows.
    pub fn appeared_ids(&self) -> impl Iterator<Item = &str> {
        self.changes
            .iter()
            .filter(|c| c.change_type == ChangeType::Appeared)
            .map(|c| c.account_id.as_str())
    }

    /// Turns `appeared` into `reappeared` for accounts that an older snapshot had.
    pub fn mark_reappeared(&mut self, seen_earlier: &dyn Fn(&str) -> bool) {
        for c in &mut self.changes {
            if c.change_type == ChangeType::Appeared && seen_earlier(&c.account_id) {
                c.change_type = ChangeType::Reappeared;
            }
        }
    }
}

/// Compares `before` with `after`. `seen_earlier(id)` says whether an account absent from
/// `before` was present in some snapshot older than `before` (it is then `reappeared`).
pub fn diff<A, B>(before: &A, after: &B, seen_earlier: &dyn Fn(&str) -> bool) -> Difference
where
    A: Side + ?Sized,
    B: Side + ?Sized,
{
    let mut builder = DiffBuilder::new(before);
    builder.push(after);
    let mut difference = builder.finish();
    difference.mark_reappeared(seen_earlier);
    difference
}

/// Feeds one optional string into a fingerprint, with a tag so `None` and `Some("")` differ.
pub fn hash_opt_str(h: &mut impl Hasher, v: Option<&str>) {
    match v {
        None => h.write_u8(0),
        Some(s) => {
            h.write_u8(1);
            s.hash(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn acct(id: &str, status: &str, email: &str, roles: &[&str]) -> (String, Compared) {
        (
            id.to_owned(),
            Compared {
                status: Some(status.into()),
                email: Some(email.into()),
                platform_roles: Some(roles.iter().map(|r| r.to_string()).collect()),
                ..Default::default()
            }
            .normalised(),
        )
    }

    #[test]
    fn each_change_type() {
        let a = vec![
            acct("1", "active", "a@x", &[]),
            acct("2", "active", "b@x", &["r1", "r2"]),
            acct("3", "active", "c@x", &[]),
        ];
        let b = vec![
            acct("2", "suspended", "b@x", &["r2", "r1"]),
            acct("3", "active", "c@x", &[]),
            acct("4", "active", "d@x", &[]),
            acct("5", "active", "e@x", &[]),
        ];
        let d = diff(a.as_slice(), b.as_slice(), &|id| id == "5");
        let kinds: Vec<_> = d
            .changes
            .iter()
            .map(|c| (c.account_id.as_str(), c.change_type))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("1", ChangeType::Vanished),
                ("2", ChangeType::Changed),
                ("4", ChangeType::Appeared),
                ("5", ChangeType::Reappeared)
            ]
        );
        // Roles compare as a set: only the status changed.
        assert_eq!(d.changes[1].changed_fields, vec!["status"]);
        assert_eq!(d.changes[0].current().email.as_deref(), Some("a@x"));
        assert!(d.changes[0].after.is_none() && d.changes[2].before.is_none());
    }

    fn arb_accounts() -> impl Strategy<Value = Vec<(String, Compared)>> {
        proptest::collection::btree_map(
            "[a-f0-9]{1,4}",
            (
                prop::option::of(prop::sample::select(vec![
                    "active",
                    "suspended",
                    "deactivated",
                ])),
                prop::option::of("[a-c]{0,2}@x"),
                prop::collection::vec(prop::sample::select(vec!["r1", "r2", "r3"]), 0..3),
                any::<Option<bool>>(),
            ),
            0..40,
        )
        .prop_map(|m| {
            m.into_iter()
                .map(|(id, (status, email, roles, mfa))| {
                    (
                        id,
                        Compared {
                            status: status.map(str::to_owned),
                            email,
                            platform_roles: Some(roles.into_iter().map(str::to_owned).collect()),
                            mfa_enabled: mfa,
                            ..Default::default()
                        }
                        .normalised(),
                    )
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn diff_of_a_snapshot_with_itself_is_empty(a in arb_accounts()) {
            prop_assert!(diff(a.as_slice(), a.as_slice(), &|_| true).is_empty());
        }

        #[test]
        fn swapping_the_arguments_swaps_appeared_and_vanished(a in arb_accounts(), b in arb_accounts()) {
            let never = |_: &str| false;
            let forward = diff(a.as_slice(), b.as_slice(), &never);
            let backward = diff(b.as_slice(), a.as_slice(), &never);
            prop_assert_eq!(forward.count(ChangeType::Appeared), backward.count(ChangeType::Vanished));
            prop_assert_eq!(forward.count(ChangeType::Vanished), backward.count(ChangeType::Appeared));
            prop_assert_eq!(forward.flip(), backward);
        }

        #[test]
        fn applying_the_changes_to_a_gives_the_accounts_of_b(a in arb_accounts(), b in arb_accounts()) {
            let d = diff(a.as_slice(), b.as_slice(), &|id| id.len() % 2 == 0);
            let mut ids: std::collections::BTreeMap<String, Compared> = a.iter().cloned().collect();
            for c in &d.changes {
                match c.change_type {
                    ChangeType::Vanished => { ids.remove(&c.account_id); }
                    _ => { ids.insert(c.account_id.clone(), c.after.clone().unwrap()); }
                }
            }
            let want: std::collections::BTreeMap<String, Compared> = b.iter().cloned().collect();
            prop_assert_eq!(ids, want);
        }
    }
}
