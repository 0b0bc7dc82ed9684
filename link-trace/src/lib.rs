//! link-trace: an eBPF tracer for link(2) and linkat(2).
//!
//! The daemon is a pipeline of small modules: `loader` (load and attach),
//! `capture` (ring buffer to records), `event` (the JSON model), `output`
//! (renderings), `sink` (the outputs, each behind its own queue), `config`
//! (file and flags), `stats` (loss accounting), `metrics` (the Prometheus
//! endpoint), tied together by `daemon`.
//! `rules` evaluates detection rules in the `detect` stage and in `replay`.

pub mod btf;
pub mod capture;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod detect;
pub mod doctor;
pub mod enrich;
pub mod event;
pub mod event_json;
pub mod formats;
pub mod klog;
pub mod loader;
pub mod metrics;
pub mod names;
pub mod output;
pub mod pipeline;
pub mod privileges;
pub mod replay;
pub mod resolve;
pub mod rules;
pub mod sink;
pub mod stats;

/// An error and its causes on one line: "a: b: c".
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
