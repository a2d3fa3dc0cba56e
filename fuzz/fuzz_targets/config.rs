//! Arbitrary bytes → the YAML configuration path of `sluice validate` and of every reload:
//! `config::parse` (serde_yaml → raw types → `compile`, which reports every error), then, for
//! a configuration that passes, the routing table `run` would build from it. Must never panic;
//! `Err(ConfigErrors)` is a fine answer.
//!
//! `compile` reads the CA files that `tls.ca` / `webhook.ca` name (and only those; listener
//! certificates are read by `sluice validate` afterwards, which this target leaves out). So that
//! a mutated path cannot make it read a device forever, inputs naming `/dev/`, `/proc/` or
//! `/sys/` are skipped. (The target must not change directory: libFuzzer writes its corpus
//! and artifacts by relative paths.)
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if ["/dev/", "/proc/", "/sys/"].iter().any(|p| text.contains(p)) {
        return;
    }
    match sluice::config::parse(text) {
        Ok(config) => {
            // What `run` does with an accepted configuration: build and publish revision 1.
            let routing = sluice::Routing::new(&config);
            let table = routing.load_full();
            assert_eq!(table.services.len(), config.services.len());
            for warning in &config.warnings {
                std::hint::black_box(warning.len());
            }
        }
        Err(errors) => {
            // `validate` prints every error; a rejected file has at least one.
            assert!(!errors.0.is_empty(), "Err without any error");
            std::hint::black_box(errors.to_string());
        }
    }
});
