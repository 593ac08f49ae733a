//! The Atlassian Admin API: the HTTP client ([`client`]) and the wire models and page decoder
//! ([`model`]). Nothing outside this module builds Admin API URLs or parses its JSON.

pub mod client;
pub mod model;
pub mod retry;

pub use client::{AdminClient, ApiError, UsersFilter};
