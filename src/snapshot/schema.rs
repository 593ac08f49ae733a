//! The `atlassian_users` schema and the builder that turns user records into Arrow batches.
//!
//! The schema is explicit and versioned ([`SCHEMA_VERSION`]); nothing is inferred at run time.
//! Changing a column's name, type or meaning means bumping the version and saying so in
//! README.md, because analysts' queries and the diff depend on it.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};

use crate::atlassian::model::{ClaimTag, UserRecord};

/// Version of the `atlassian_users` schema, recorded in every file and manifest.
pub const SCHEMA_VERSION: u32 = 1;

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The `atlassian_users` schema, column by column.
pub fn users_schema() -> SchemaRef {
    let s = |name: &str| Field::new(name, DataType::Utf8, true);
    let b = |name: &str| Field::new(name, DataType::Boolean, true);
    Arc::new(Schema::new(vec![
        Field::new("org_id", DataType::Utf8, false),
        Field::new("account_id", DataType::Utf8, false),
        s("account_type"),
        s("status"),
        s("account_status"),
        s("membership_status"),
        Field::new("claim_status", DataType::Utf8, false),
        Field::new("is_managed", DataType::Boolean, false),
        s("email"),
        s("email_domain"),
        b("email_verified"),
        s("name"),
        s("nickname"),
        Field::new("added_to_org", ts(), true),
        Field::new(
            "platform_roles",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            true,
        ),
        b("mfa_enabled"),
        s("management_source"),
        s("job_title"),
        s("department"),
        s("organization"),
        s("location"),
        s("time_zone"),
        Field::new("resource_count", DataType::Int64, true),
        Field::new("scanned_at", ts(), false),
        Field::new("raw", DataType::Utf8, false),
    ]))
}

/// Parses `addedToOrg`. Unparseable values become null (the original stays in `raw`).
pub fn parse_timestamp_micros(value: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(value.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc).timestamp_micros())
}

/// The lower-cased part after the last `@`, if any.
pub fn email_domain(email: &str) -> Option<String> {
    let (_, domain) = email.rsplit_once('@')?;
    let domain = domain.trim();
    (!domain.is_empty()).then(|| domain.to_lowercase())
}

/// Accumulates records column by column; [`UsersBatchBuilder::finish`] yields a batch.
pub struct UsersBatchBuilder {
    schema: SchemaRef,
    org_id: String,
    org: StringBuilder,
    account_id: StringBuilder,
    account_type: StringBuilder,
    status: StringBuilder,
    account_status: StringBuilder,
    membership_status: StringBuilder,
    claim_status: StringBuilder,
    is_managed: BooleanBuilder,
    email: StringBuilder,
    email_domain: StringBuilder,
    email_verified: BooleanBuilder,
    name: StringBuilder,
    nickname: StringBuilder,
    added_to_org: TimestampMicrosecondBuilder,
    platform_roles: ListBuilder<StringBuilder>,
    mfa_enabled: BooleanBuilder,
    management_source: StringBuilder,
    job_title: StringBuilder,
    department: StringBuilder,
    organization: StringBuilder,
    location: StringBuilder,
    time_zone: StringBuilder,
    resource_count: Int64Builder,
    scanned_at: TimestampMicrosecondBuilder,
    raw: StringBuilder,
    rows: usize,
    /// `addedToOrg` values that were present but not ISO-8601.
    pub bad_timestamps: u64,
}

impl UsersBatchBuilder {
    /// A builder for records of organization `org_id`.
    pub fn new(org_id: &str) -> Self {
        let sb = StringBuilder::new;
        UsersBatchBuilder {
            schema: users_schema(),
            org_id: org_id.to_owned(),
            org: sb(),
            account_id: sb(),
            account_type: sb(),
            status: sb(),
            account_status: sb(),
            membership_status: sb(),
            claim_status: sb(),
            is_managed: BooleanBuilder::new(),
            email: sb(),
            email_domain: sb(),
            email_verified: BooleanBuilder::new(),
            name: sb(),
            nickname: sb(),
            added_to_org: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            platform_roles: ListBuilder::new(sb()),
            mfa_enabled: BooleanBuilder::new(),
            management_source: sb(),
            job_title: sb(),
            department: sb(),
            organization: sb(),
            location: sb(),
            time_zone: sb(),
            resource_count: Int64Builder::new(),
            scanned_at: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            raw: sb(),
            rows: 0,
            bad_timestamps: 0,
        }
    }

    /// Rows appended since the last `finish`.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when no row is pending.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends one record with its tag and the time its page arrived.
    pub fn append(&mut self, u: &UserRecord, tag: ClaimTag, scanned_at: DateTime<Utc>) {
        self.org.append_value(&self.org_id);
        self.account_id.append_value(&u.account_id);
        self.account_type.append_option(u.account_type.as_deref());
        self.status.append_option(u.status.as_deref());
        self.account_status
            .append_option(u.account_status.as_deref());
        self.membership_status
            .append_option(u.membership_status.as_deref());
        self.claim_status.append_value(tag.as_str());
        self.is_managed.append_value(tag == ClaimTag::Managed);
        self.email.append_option(u.email.as_deref());
        self.email_domain
            .append_option(u.email.as_deref().and_then(email_domain));
        self.email_verified.append_option(u.email_verified);
        self.name.append_option(u.name.as_deref());
        self.nickname.append_option(u.nickname.as_deref());
        let added = u.added_to_org.as_deref().and_then(|v| {
            let parsed = parse_timestamp_micros(v);
            if parsed.is_none() {
                self.bad_timestamps += 1;
            }
            parsed
        });
        self.added_to_org.append_option(added);
        match &u.platform_roles {
            Some(roles) => {
                for r in roles {
                    self.platform_roles.values().append_value(r);
                }
                self.platform_roles.append(true);
            }
            None => self.platform_roles.append(false),
        }
        self.mfa_enabled.append_option(u.mfa_enabled);
        self.management_source
            .append_option(u.management_source.as_deref());
        self.job_title.append_option(u.job_title.as_deref());
        self.department.append_option(u.department.as_deref());
        self.organization.append_option(u.organization.as_deref());
        self.location.append_option(u.location.as_deref());
        self.time_zone.append_option(u.time_zone.as_deref());
        self.resource_count
            .append_option(u.counts.as_ref().and_then(|c| c.resources));
        self.scanned_at.append_value(scanned_at.timestamp_micros());
        self.raw.append_value(&u.raw);
        self.rows += 1;
    }

    /// Takes the pending rows as a batch (possibly empty).
    pub fn finish(&mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.org.finish()),
            Arc::new(self.account_id.finish()),
            Arc::new(self.account_type.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.account_status.finish()),
            Arc::new(self.membership_status.finish()),
            Arc::new(self.claim_status.finish()),
            Arc::new(self.is_managed.finish()),
            Arc::new(self.email.finish()),
            Arc::new(self.email_domain.finish()),
            Arc::new(self.email_verified.finish()),
            Arc::new(self.name.finish()),
            Arc::new(self.nickname.finish()),
            Arc::new(self.added_to_org.finish()),
            Arc::new(self.platform_roles.finish()),
            Arc::new(self.mfa_enabled.finish()),
            Arc::new(self.management_source.finish()),
            Arc::new(self.job_title.finish()),
            Arc::new(self.department.finish()),
            Arc::new(self.organization.finish()),
            Arc::new(self.location.finish()),
            Arc::new(self.time_zone.finish()),
            Arc::new(self.resource_count.finish()),
            Arc::new(self.scanned_at.finish()),
            Arc::new(self.raw.finish()),
        ];
        self.rows = 0;
        // The columns are built in schema order with the schema's types, and every append
        // adds exactly one value per column, so this cannot fail.
        #[allow(clippy::expect_used)]
        RecordBatch::try_new(self.schema.clone(), columns)
            .expect("builder columns match users_schema")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_matches_schema_and_nulls_absent_values() {
        let mut b = UsersBatchBuilder::new("org-1");
        let u = UserRecord {
            account_id: "a1".into(),
            email: Some("Ana@Example.COM".into()),
            added_to_org: Some("2024-01-01T00:00:00.000Z".into()),
            platform_roles: Some(vec!["atlassian/org-admin".into()]),
            raw: "{}".into(),
            ..Default::default()
        };
        b.append(&u, ClaimTag::Managed, Utc::now());
        b.append(
            &UserRecord {
                account_id: "a2".into(),
                added_to_org: Some("yesterday".into()),
                raw: "{}".into(),
                ..Default::default()
            },
            ClaimTag::Unknown,
            Utc::now(),
        );
        let batch = b.finish();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), users_schema());
        assert_eq!(b.bad_timestamps, 1);
        let domain = batch.column_by_name("email_domain").unwrap();
        assert_eq!(
            arrow::array::as_string_array(domain).value(0),
            "example.com"
        );
        assert!(domain.is_null(1));
    }

    #[test]
    fn email_domains() {
        assert_eq!(email_domain("x@Y.org").as_deref(), Some("y.org"));
        assert_eq!(
            email_domain("weird@name@Host.io").as_deref(),
            Some("host.io")
        );
        assert_eq!(email_domain("nobody"), None);
        assert_eq!(email_domain("x@"), None);
    }
}
