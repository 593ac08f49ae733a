//! Admin API wire models and the page decoder.
//!
//! Decoding is tolerant where the API is known to drift (unknown fields and unknown enum
//! strings are kept, every field may be absent) and strict where silence would lose users: a
//! page without a `data` array, a record without an `accountId` or a `links.next` that is not a
//! string is an error, never "zero users". Each record keeps its exact JSON text as `raw`, so no
//! field the API adds is ever lost. This module does no I/O.

use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

/// The `claimStatus` tag idsnap stores for a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClaimTag {
    /// `claimStatus: "managed"`.
    Managed,
    /// `claimStatus: "unmanaged"`.
    Unmanaged,
    /// `claimStatus` absent, null, or a value Atlassian has not documented.
    Unknown,
}

impl ClaimTag {
    /// Tags a record from its `claimStatus` (never from the email domain).
    pub fn from_claim_status(value: Option<&str>) -> ClaimTag {
        match value {
            Some("managed") => ClaimTag::Managed,
            Some("unmanaged") => ClaimTag::Unmanaged,
            _ => ClaimTag::Unknown,
        }
    }

    /// The string stored in the `claim_status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimTag::Managed => "managed",
            ClaimTag::Unmanaged => "unmanaged",
            ClaimTag::Unknown => "unknown",
        }
    }
}

/// `counts` on a user record.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Counts {
    /// Resources the user has roles on.
    pub resources: Option<i64>,
}

/// One user of `GET/POST .../directories/-/users`, as documented in 2026-08 (every field
/// optional), plus its raw JSON.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserRecord {
    /// `accountId`; checked present and non-empty by the decoder.
    #[serde(default)]
    pub account_id: String,
    /// `accountType` (`atlassian`).
    pub account_type: Option<String>,
    /// Composite `status` (`active`, `suspended`, `not_invited`, `deactivated`, `for_deletion`).
    pub status: Option<String>,
    /// `accountStatus` (`active`, `inactive`, `closed`).
    pub account_status: Option<String>,
    /// `membershipStatus` (`active`, `suspended`, `no_membership`).
    pub membership_status: Option<String>,
    /// `addedToOrg`, ISO-8601 as sent.
    pub added_to_org: Option<String>,
    /// `name`.
    pub name: Option<String>,
    /// `nickname`.
    pub nickname: Option<String>,
    /// `email`.
    pub email: Option<String>,
    /// `emailVerified`.
    pub email_verified: Option<bool>,
    /// `claimStatus` as sent.
    pub claim_status: Option<String>,
    /// `platformRoles`.
    pub platform_roles: Option<Vec<String>>,
    /// `mfaEnabled`.
    pub mfa_enabled: Option<bool>,
    /// `managementSource` (`invited`, `synced`, null).
    pub management_source: Option<String>,
    /// `jobTitle`.
    pub job_title: Option<String>,
    /// `department`.
    pub department: Option<String>,
    /// `organization`.
    pub organization: Option<String>,
    /// `location`.
    pub location: Option<String>,
    /// `timeZone`.
    pub time_zone: Option<String>,
    /// `counts`.
    pub counts: Option<Counts>,
    /// The record's JSON exactly as received.
    #[serde(skip)]
    pub raw: String,
}

impl UserRecord {
    /// The longest string field kept in the snapshot (not `raw`), with its length in
    /// characters.
    pub fn longest_field(&self) -> Option<(&'static str, usize)> {
        let fields: [(&'static str, Option<&str>); 17] = [
            ("accountId", Some(self.account_id.as_str())),
            ("accountType", self.account_type.as_deref()),
            ("status", self.status.as_deref()),
            ("accountStatus", self.account_status.as_deref()),
            ("membershipStatus", self.membership_status.as_deref()),
            ("addedToOrg", self.added_to_org.as_deref()),
            ("name", self.name.as_deref()),
            ("nickname", self.nickname.as_deref()),
            ("email", self.email.as_deref()),
            ("claimStatus", self.claim_status.as_deref()),
            ("managementSource", self.management_source.as_deref()),
            ("jobTitle", self.job_title.as_deref()),
            ("department", self.department.as_deref()),
            ("organization", self.organization.as_deref()),
            ("location", self.location.as_deref()),
            ("timeZone", self.time_zone.as_deref()),
            (
                "platformRoles",
                self.platform_roles
                    .as_ref()
                    .and_then(|r| r.iter().max_by_key(|s| s.len()))
                    .map(String::as_str),
            ),
        ];
        fields
            .into_iter()
            .filter_map(|(name, v)| v.map(|v| (name, v)))
            // Byte length bounds character length, so only long values are counted.
            .filter(|(_, v)| v.len() > 64)
            .map(|(name, v)| (name, v.chars().count()))
            .max_by_key(|(_, n)| *n)
    }
}

/// Where the next page starts: the opaque token to send back as `cursor`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor(pub String);

impl Cursor {
    /// Reads `links.next`. v2 endpoints send a bare token, v1 ones a full URL whose `cursor`
    /// query parameter is the token; both are accepted. Missing, null or empty means done.
    pub fn from_next(next: Option<&str>) -> Result<Option<Cursor>, String> {
        let Some(next) = next.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        if next.starts_with("http://") || next.starts_with("https://") {
            let url = Url::parse(next)
                .map_err(|e| format!("links.next is a URL that does not parse: {e}"))?;
            let cursor = url
                .query_pairs()
                .find(|(k, _)| k == "cursor")
                .map(|(_, v)| v.into_owned())
                .filter(|v| !v.is_empty())
                .ok_or("links.next is a URL without a cursor parameter")?;
            return Ok(Some(Cursor(cursor)));
        }
        Ok(Some(Cursor(next.to_owned())))
    }
}

/// One decoded page of users.
#[derive(Debug)]
pub struct UsersPage {
    /// The records, in page order.
    pub users: Vec<UserRecord>,
    /// The next page, or `None` at the end.
    pub next: Option<Cursor>,
}

/// Why a page could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// Not JSON, or cut short. Retryable: a truncated body is usually the network.
    #[error("the response is not valid JSON ({0})")]
    NotJson(String),
    /// JSON, but not a users page. Not retryable.
    #[error("the response is not a users page: {0}")]
    Malformed(String),
}

#[derive(Deserialize)]
struct PageWire<'a> {
    #[serde(borrow, default)]
    data: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    links: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct LinksWire<'a> {
    #[serde(borrow, default)]
    next: Option<&'a RawValue>,
}

/// Decodes one users page from the response body, refusing string fields longer than
/// `max_field_chars` characters.
pub fn decode_users_page(body: &[u8], max_field_chars: usize) -> Result<UsersPage, PageError> {
    let page: PageWire<'_> = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) if e.is_syntax() || e.is_eof() => return Err(PageError::NotJson(e.to_string())),
        Err(e) => return Err(PageError::Malformed(e.to_string())),
    };
    let data = page
        .data
        .ok_or_else(|| PageError::Malformed("no \"data\" array".into()))?;
    let mut users = Vec::with_capacity(data.len());
    for (i, raw) in data.into_iter().enumerate() {
        let mut user: UserRecord = serde_json::from_str(raw.get())
            .map_err(|e| PageError::Malformed(format!("data[{i}]: {e}")))?;
        if user.account_id.is_empty() {
            return Err(PageError::Malformed(format!("data[{i}] has no accountId")));
        }
        if let Some((field, chars)) = user.longest_field().filter(|(_, n)| *n > max_field_chars) {
            return Err(PageError::Malformed(format!(
                "data[{i}].{field} is {chars} characters long, more than the limit of {max_field_chars} ([http] max_field_chars)"
            )));
        }
        user.raw = raw.get().to_owned();
        users.push(user);
    }
    Ok(UsersPage {
        users,
        next: next_cursor(page.links)?,
    })
}

fn next_cursor(links: Option<&RawValue>) -> Result<Option<Cursor>, PageError> {
    let Some(links) = links else { return Ok(None) };
    if links.get() == "null" {
        return Ok(None);
    }
    let links: LinksWire<'_> = serde_json::from_str(links.get())
        .map_err(|e| PageError::Malformed(format!("links: {e}")))?;
    let next: Option<String> = match links.next {
        None => None,
        Some(raw) => serde_json::from_str(raw.get()).map_err(|_| {
            PageError::Malformed(format!("links.next is not a string: {}", raw.get()))
        })?,
    };
    Cursor::from_next(next.as_deref()).map_err(PageError::Malformed)
}

/// `GET .../directories` page, reduced to what `idsnap test` needs.
#[derive(Debug, Deserialize)]
pub struct DirectoriesPage {
    /// The directories on this page.
    pub data: Vec<serde_json::Value>,
    /// Pagination.
    #[serde(default)]
    pub links: Option<NextLink>,
}

/// A `links` object with an optional `next`.
#[derive(Debug, Deserialize)]
pub struct NextLink {
    /// The next cursor or URL.
    pub next: Option<String>,
}

/// `GET .../users/count`.
#[derive(Debug, Deserialize)]
pub struct CountResponse {
    /// The number of users matching the filter.
    pub count: u64,
}

/// Extracts a human-readable reason from any of the Admin API's error body shapes:
/// `{"errors":[{"title","detail","code"}]}`, the gateway's `{"code":401,"message":…}`, the
/// 403 `{"error","message"}` shape and `{"key":…}`. Returns `None` for anything else.
pub fn error_reason(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text =
        |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    if let Some(first) = v
        .get("errors")
        .and_then(|e| e.as_array())
        .and_then(|a| a.first())
    {
        let parts: Vec<String> = ["code", "title", "detail"]
            .iter()
            .filter_map(|k| text(first, k))
            .collect();
        if !parts.is_empty() {
            return Some(parts.join(": "));
        }
    }
    text(&v, "message")
        .or_else(|| text(&v, "error"))
        .or_else(|| text(&v, "key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_spec_example_and_keeps_raw() {
        let body = br#"{"data":[{"accountId":"abc","claimStatus":"managed","email":"A@Example.com",
            "platformRoles":["atlassian/org-admin"],"counts":{"resources":10},"newField":{"x":1}}],
            "links":{"self":"s","next":"Qh8E1QpVV00ys/xI7pHI7Q.."}}"#;
        let page = decode_users_page(body, 8192).unwrap();
        assert_eq!(page.users.len(), 1);
        let u = &page.users[0];
        assert_eq!(u.account_id, "abc");
        assert_eq!(u.counts.as_ref().unwrap().resources, Some(10));
        assert!(u.raw.contains("newField"));
        assert_eq!(page.next, Some(Cursor("Qh8E1QpVV00ys/xI7pHI7Q..".into())));
    }

    #[test]
    fn next_accepts_url_token_and_end_markers() {
        for end in [
            r#"{"data":[]}"#,
            r#"{"data":[],"links":{}}"#,
            r#"{"data":[],"links":{"next":null}}"#,
            r#"{"data":[],"links":{"next":""}}"#,
            r#"{"data":[],"links":null}"#,
        ] {
            assert_eq!(
                decode_users_page(end.as_bytes(), 8192).unwrap().next,
                None,
                "{end}"
            );
        }
        let url = br#"{"data":[],"links":{"next":"https://api.atlassian.com/admin/v1/orgs/o/users?cursor=a%2Fb%2Bc"}}"#;
        assert_eq!(
            decode_users_page(url, 8192).unwrap().next,
            Some(Cursor("a/b+c".into()))
        );
        let bad = br#"{"data":[],"links":{"next":17}}"#;
        assert!(matches!(
            decode_users_page(bad, 8192),
            Err(PageError::Malformed(_))
        ));
    }

    #[test]
    fn missing_data_or_account_id_is_an_error_not_zero_users() {
        assert!(matches!(
            decode_users_page(br#"{"links":{}}"#, 8192),
            Err(PageError::Malformed(_))
        ));
        assert!(matches!(
            decode_users_page(br#"{"data":null}"#, 8192),
            Err(PageError::Malformed(_))
        ));
        assert!(matches!(
            decode_users_page(br#"{"data":[{"email":"x"}]}"#, 8192),
            Err(PageError::Malformed(_))
        ));
        assert!(matches!(
            decode_users_page(br#"{"data":[{"accountId":"a"}"#, 8192),
            Err(PageError::NotJson(_))
        ));
        assert!(matches!(
            decode_users_page(b"<html>", 8192),
            Err(PageError::NotJson(_))
        ));
    }

    #[test]
    fn over_long_fields_are_refused() {
        let long = "x".repeat(5000);
        let body = format!(r#"{{"data":[{{"accountId":"a","email":"{long}"}}]}}"#);
        let err = decode_users_page(body.as_bytes(), 4096).unwrap_err();
        assert!(
            err.to_string().contains("data[0].email is 5000 characters"),
            "{err}"
        );
        assert!(decode_users_page(body.as_bytes(), 8192).is_ok());
    }

    #[test]
    fn error_bodies_of_every_shape() {
        assert_eq!(
            error_reason(br#"{"code":401,"message":"Unauthorized"}"#).as_deref(),
            Some("Unauthorized")
        );
        assert_eq!(
            error_reason(
                br#"{"errors":[{"status":404,"code":"ADMIN-404-2","title":"Not Found"}]}"#
            )
            .as_deref(),
            Some("ADMIN-404-2: Not Found")
        );
        assert_eq!(
            error_reason(br#"{"key":"unauthorized"}"#).as_deref(),
            Some("unauthorized")
        );
        assert_eq!(error_reason(b"nope"), None);
    }

    #[test]
    fn tags() {
        assert_eq!(
            ClaimTag::from_claim_status(Some("managed")),
            ClaimTag::Managed
        );
        assert_eq!(
            ClaimTag::from_claim_status(Some("unmanaged")),
            ClaimTag::Unmanaged
        );
        assert_eq!(
            ClaimTag::from_claim_status(Some("pending")),
            ClaimTag::Unknown
        );
        assert_eq!(ClaimTag::from_claim_status(None), ClaimTag::Unknown);
    }
}
