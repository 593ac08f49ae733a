//! Fuzzes the users-page decoder and the error-body reader with arbitrary response bytes:
//! they must return a value or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(page) = idsnap::atlassian::model::decode_users_page(data, 8192) {
        for user in &page.users {
            assert!(!user.account_id.is_empty());
            let _ = user.longest_field();
        }
    }
    let _ = idsnap::atlassian::model::error_reason(data);
});
