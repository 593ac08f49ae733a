//! Fuzzes the config loader with arbitrary text: it must return a config or a list of
//! problems, never panic.
#![no_main]

use std::path::Path;

use idsnap::config::{Env, Selection, from_toml_str};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match from_toml_str(text, &Env::default(), Selection::NoTokens, Path::new("/nonexistent")) {
            Ok(config) => assert!(!config.connections.is_empty()),
            Err(errors) => assert!(!errors.problems.is_empty()),
        }
    }
});
