//! The simulator's seeded population: realistic, reproducible users rendered once as the
//! Admin API's JSON.
//!
//! The same seed and size always give the same users. The mix covers what a real
//! organization holds: managed and unmanaged accounts, every documented `status` (with
//! consistent `accountStatus` / `membershipStatus`), users without email, upper-case email
//! domains, non-ASCII names, admins, and managed accounts that are in no directory.

use serde::Serialize;

/// Knobs that shape a population beyond its size and seed.
#[derive(Debug, Clone, Default)]
pub struct PopulationOptions {
    /// Every Nth user (1-based) has no `claimStatus` at all (0 = never).
    pub missing_claim_status_every: usize,
    /// Every Nth entry (1-based) repeats the record of the entry 150 places before it, so
    /// the same `accountId` comes back on a later page (0 = never).
    pub duplicate_every: usize,
    /// Give every Nth user (1-based) this undocumented `status` value (0 = never).
    pub odd_status_every: usize,
}

/// One rendered user.
#[derive(Debug, Clone)]
pub struct SimUser {
    /// `accountId`.
    pub account_id: String,
    /// `claimStatus`, if present.
    pub claim_status: Option<&'static str>,
    /// `status`.
    pub status: String,
    /// The record's JSON.
    pub json: String,
}

/// A deterministic PRNG (splitmix64): tiny, seedable, and good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeds the generator.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5851_f42d_4c95_7f2d)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const FIRST: &[&str] = &[
    "Ana",
    "Bob",
    "Chloé",
    "Dmitri",
    "Émilie",
    "Farah",
    "Günther",
    "Hana",
    "Ibrahim",
    "Jürgen",
    "Kenji",
    "Léa",
    "María José",
    "Nils",
    "Øystein",
    "Priya",
    "Quentin",
    "Renée",
    "Søren",
    "Tomás",
    "Ursula",
    "Valentina",
    "Wojciech",
    "Xiang",
    "Yusuf",
    "Zoë",
    "李",
    "Οδυσσέας",
    "Алёна",
    "محمد",
];
const LAST: &[&str] = &[
    "Andersen",
    "Brown",
    "Çelik",
    "Dubois",
    "Ebert",
    "Fernández",
    "García",
    "Håkansson",
    "Ito",
    "Jovanović",
    "Kowalski",
    "López",
    "Müller",
    "Nakamura",
    "O'Brien",
    "Petrović",
    "Quispe",
    "Røed",
    "Schröder",
    "Tanaka",
    "Üzüm",
    "Virtanen",
    "Wang",
    "Xu",
    "Yılmaz",
    "Zieliński",
    "小龍",
];
const MANAGED_DOMAINS: &[&str] = &["acme.example", "acme-eu.example", "ACME.Example"];
const OTHER_DOMAINS: &[&str] = &[
    "gmail.example",
    "contractor.example",
    "partner.example",
    "Outlook.Example",
];
const DEPARTMENTS: &[&str] = &[
    "Engineering",
    "Finance",
    "Human Resources",
    "Sales",
    "Support",
    "Legal",
];
const LOCATIONS: &[(&str, &str)] = &[
    ("New York", "America/New_York"),
    ("Berlin", "Europe/Berlin"),
    ("Sydney", "Australia/Sydney"),
    ("São Paulo", "America/Sao_Paulo"),
    ("Bengaluru", "Asia/Kolkata"),
];

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UserJson<'a> {
    account_id: &'a str,
    account_type: &'static str,
    status: &'a str,
    account_status: &'static str,
    membership_status: &'static str,
    added_to_org: String,
    name: String,
    nickname: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    email_verified: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    claim_status: Option<&'static str>,
    platform_roles: Vec<&'static str>,
    picture: String,
    avatar: String,
    counts: Counts,
    links: Links,
    #[serde(skip_serializing_if = "Option::is_none")]
    management_source: Option<Option<&'static str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mfa_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_title: Option<&'static str>,
    department: Option<&'static str>,
    organization: Option<&'static str>,
    location: Option<&'static str>,
    time_zone: Option<&'static str>,
}

#[derive(Serialize)]
struct Counts {
    resources: u64,
}

#[derive(Serialize)]
struct Links {
    #[serde(rename = "self")]
    self_: String,
}

/// Generates `n` users (plus duplicates, if asked) from `seed`.
pub fn generate(n: usize, seed: u64, options: &PopulationOptions) -> Vec<SimUser> {
    let mut rng = Rng::new(seed);
    let mut users: Vec<SimUser> = Vec::with_capacity(n + n / options.duplicate_every.max(1));
    let mut entry = 0usize;
    for i in 0..n {
        entry += 1;
        if options.duplicate_every > 0
            && entry.is_multiple_of(options.duplicate_every)
            && users.len() >= 150
        {
            let earlier = users[users.len() - 150].clone();
            users.push(earlier);
            entry += 1;
        }
        users.push(make_user(i, &mut rng, options));
    }
    users
}

fn make_user(i: usize, rng: &mut Rng, options: &PopulationOptions) -> SimUser {
    // The index makes every ID unique; the random part makes them look like real ones.
    let account_id = if rng.chance(20) {
        format!(
            "557058:{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            i,
            rng.below(1 << 16),
            rng.below(1 << 12),
            rng.below(1 << 12),
            rng.next_u64() & 0xffff_ffff_ffff
        )
    } else {
        format!("5b10a284{i:08x}{:08x}", rng.next_u64() as u32)
    };
    let managed = rng.chance(70);
    let mut claim_status = Some(if managed { "managed" } else { "unmanaged" });
    if options.missing_claim_status_every > 0
        && (i + 1).is_multiple_of(options.missing_claim_status_every)
    {
        claim_status = None;
    }
    // A managed account in no directory: not invited, no membership.
    let (status, account_status, membership_status) = match rng.below(100) {
        0..=69 => ("active", "active", "active"),
        70..=77 => ("suspended", "active", "suspended"),
        78..=84 if managed => ("not_invited", "active", "no_membership"),
        78..=84 => ("active", "active", "active"),
        85..=94 => (
            "deactivated",
            "inactive",
            *rng.pick(&["active", "suspended"]),
        ),
        _ if managed => ("for_deletion", "inactive", "suspended"),
        _ => ("deactivated", "closed", "suspended"),
    };
    let mut status = status.to_owned();
    if options.odd_status_every > 0 && (i + 1).is_multiple_of(options.odd_status_every) {
        status = "pending_review".to_owned();
    }
    let first = *rng.pick(FIRST);
    let last = *rng.pick(LAST);
    let email = (!rng.chance(5)).then(|| {
        let domain = if managed {
            rng.pick(MANAGED_DOMAINS)
        } else {
            rng.pick(OTHER_DOMAINS)
        };
        let local: String = first
            .chars()
            .chain(".".chars())
            .chain(last.chars())
            .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
            .collect();
        format!("{}{i}@{domain}", local.to_lowercase())
    });
    let roles = match rng.below(100) {
        0..=1 => vec!["atlassian/org-admin"],
        2..=3 => vec!["atlassian/site-admin", "atlassian/user-access-admin"],
        4..=9 => vec!["atlassian/ai-access"],
        _ => vec![],
    };
    let (location, tz) = *rng.pick(LOCATIONS);
    let profile = managed && rng.chance(80);
    let year = 2019 + rng.below(8);
    let json = serde_json::to_string(&UserJson {
        account_id: &account_id,
        account_type: "atlassian",
        status: &status,
        account_status,
        membership_status,
        added_to_org: format!(
            "{year}-{:02}-{:02}T{:02}:{:02}:{:02}.000Z",
            1 + rng.below(12),
            1 + rng.below(28),
            rng.below(24),
            rng.below(60),
            rng.below(60)
        ),
        name: format!("{first} {last}"),
        nickname: first.to_owned(),
        email,
        email_verified: rng.chance(90),
        claim_status,
        platform_roles: roles,
        picture: format!("https://avatar.example/{i}.png"),
        avatar: format!("https://avatar.example/{i}/public.png"),
        counts: Counts {
            resources: rng.below(20),
        },
        links: Links {
            self_: format!("U{i:x}cur"),
        },
        management_source: managed.then(|| *rng.pick(&[Some("invited"), Some("synced"), None])),
        mfa_enabled: managed.then(|| rng.chance(75)),
        job_title: profile.then(|| *rng.pick(&["Engineer", "Analyst", "Manager", "Director"])),
        department: profile.then(|| *rng.pick(DEPARTMENTS)),
        organization: profile.then_some("Acme"),
        location: profile.then_some(location),
        time_zone: profile.then_some(tz),
    });
    // Serialising plain strings, numbers and booleans into a String cannot fail.
    let json = json.unwrap_or_default();
    SimUser {
        account_id,
        claim_status,
        status,
        json,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_people_and_every_kind_is_present() {
        let a = generate(2000, 7, &PopulationOptions::default());
        let b = generate(2000, 7, &PopulationOptions::default());
        assert_eq!(
            a.iter().map(|u| &u.json).collect::<Vec<_>>(),
            b.iter().map(|u| &u.json).collect::<Vec<_>>()
        );
        let ids: std::collections::HashSet<_> = a.iter().map(|u| &u.account_id).collect();
        assert_eq!(ids.len(), 2000, "account IDs are unique");
        for status in [
            "active",
            "suspended",
            "not_invited",
            "deactivated",
            "for_deletion",
        ] {
            assert!(a.iter().any(|u| u.status == status), "{status}");
        }
        assert!(a.iter().any(|u| u.claim_status == Some("unmanaged")));
        assert!(a.iter().any(|u| !u.json.contains("\"email\"")));
        assert!(
            a.iter()
                .any(|u| u.json.contains("no_membership") && u.claim_status == Some("managed"))
        );
        assert!(a.iter().any(|u| !u.json.is_ascii()));
    }

    #[test]
    fn duplicates_repeat_an_earlier_account() {
        let users = generate(
            1000,
            1,
            &PopulationOptions {
                duplicate_every: 200,
                ..Default::default()
            },
        );
        let ids: std::collections::HashSet<_> = users.iter().map(|u| &u.account_id).collect();
        assert_eq!(ids.len(), 1000);
        assert!(users.len() > 1000);
    }
}
