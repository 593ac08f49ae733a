//! The API token: a type that holds the secret and refuses to show it.
//!
//! `ApiToken` owns the only copy of an organization API key in memory. Its `Debug` and
//! `Display` print `***`, it is not `Serialize`, and the only way to read it is
//! [`ApiToken::bearer_header`], which builds a header value marked sensitive so that HTTP debug
//! logging redacts it too. Nothing else in the crate can print or store the token.

use std::fmt;

use reqwest::header::HeaderValue;

/// An Atlassian organization API key. Never printed, logged or serialised.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// Wraps a token read from the environment or a file. Surrounding white space (a trailing
    /// newline in a Kubernetes Secret file, say) is removed.
    pub fn new(value: impl Into<String>) -> Self {
        ApiToken(value.into().trim().to_owned())
    }

    /// True when nothing is left after trimming.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Authorization: Bearer <token>`, flagged sensitive so `Debug` on the header map and
    /// hyper's logging show nothing of it. `None` when the token holds bytes that cannot go in
    /// an HTTP header (control characters, non-ASCII), which config validation reports.
    pub fn bearer_header(&self) -> Option<HeaderValue> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", self.0)).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    /// Compares with a candidate without exposing the token (used by the simulator to check
    /// the `Authorization` header it received).
    pub fn matches_bearer(&self, header: &str) -> bool {
        header.strip_prefix("Bearer ").is_some_and(|t| t == self.0)
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(***)")
    }
}

impl fmt::Display for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_token() {
        let token = ApiToken::new("idsnap-secret-canary-7f3a\n");
        assert_eq!(format!("{token}"), "***");
        assert_eq!(format!("{token:?}"), "ApiToken(***)");
        assert!(!format!("{:?}", token.bearer_header().unwrap()).contains("canary"));
        assert!(token.matches_bearer("Bearer idsnap-secret-canary-7f3a"));
        assert!(!token.matches_bearer("Bearer idsnap-secret-canary"));
    }
}
