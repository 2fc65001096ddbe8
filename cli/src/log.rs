//! Logs on stderr: text (colour only on a terminal) or JSON, `RUST_LOG` filter.
//!
//! During an outage the library warns on every retry (the watcher's reopen, the supervisor's
//! re-registration; those live in files this CLI does not own). [`Repeats`] turns that into one
//! warning per state change: the first warning of each call site is printed, later ones are
//! counted, and a summary line per call site says how many were held back, every
//! [`SUMMARY_EVERY`] and whenever the view changes state (stale, fresh, re-registered).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::callsite::Identifier;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Target of the CLI's own log lines (never held back).
pub(crate) const TARGET: &str = "darkrift_etcd::cli";

/// How often held-back warnings are summed up.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Warnings held back since they were first printed, by call site.
#[derive(Debug, Clone, Default)]
pub(crate) struct Repeats {
    seen: Arc<Mutex<HashMap<Identifier, Held>>>,
}

#[derive(Debug)]
struct Held {
    message: String,
    count: u64,
}

/// The `message` field of an event.
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            value.clone_into(&mut self.0);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Repeats {
    /// Logs how many warnings each call site held back, and keeps holding them back.
    pub(crate) fn summarize(&self) {
        let held: Vec<(String, u64)> = {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            seen.values_mut()
                .filter(|h| h.count > 0)
                .map(|h| (h.message.clone(), std::mem::take(&mut h.count)))
                .collect()
        };
        for (message, count) in held {
            tracing::warn!(target: TARGET, "{message} (repeated {count} more times)");
        }
    }

    /// A state change: sums up what was held back, then lets the next warning of every call
    /// site through again.
    pub(crate) fn state_changed(&self) {
        self.summarize();
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

impl<S: Subscriber> Layer<S> for Repeats {
    fn event_enabled(&self, event: &Event<'_>, _cx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() != Level::WARN || meta.target() == TARGET {
            return true;
        }
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(held) = seen.get_mut(&meta.callsite()) {
            held.count += 1;
            return false;
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        seen.insert(
            meta.callsite(),
            Held {
                message: message.0,
                count: 0,
            },
        );
        true
    }
}

/// Whether log lines are coloured: only on a terminal, and not when `NO_COLOR` is set to
/// anything but the empty string (<https://no-color.org>).
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// Whether the command line or `DARKRIFT_ETCD_LOG_FORMAT` asks for JSON logs, read before (or
/// without) clap: a usage error is reported in the format asked for.
pub(crate) fn json_requested(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut asked = None;
    for (i, a) in args.iter().enumerate() {
        if a == "--" {
            break;
        }
        if let Some(v) = a.strip_prefix("--log-format=") {
            asked = Some(v.to_owned());
        } else if a == "--log-format" {
            asked = args.get(i + 1).cloned();
        }
    }
    asked
        .or_else(|| std::env::var("DARKRIFT_ETCD_LOG_FORMAT").ok())
        .is_some_and(|f| f == "json")
}

/// Installs the logger; returns the repeat filter so commands can report state changes.
pub(crate) fn init(format: Format) -> Repeats {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,darkrift_etcd=info"));
    let repeats = Repeats::default();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ));
    let fmt = match format {
        Format::Text => fmt.boxed(),
        Format::Json => fmt.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(repeats.clone())
        .with(fmt.with_filter(filter))
        .init();
    repeats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_warning_is_printed_once_per_state() {
        let repeats = Repeats::default();
        let printed = Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = printed.clone();
        let collect = tracing_subscriber::fmt::layer()
            .with_writer(move || Writer(sink.clone()))
            .with_ansi(false)
            .without_time();
        let subscriber = tracing_subscriber::registry()
            .with(repeats.clone())
            .with(collect);
        // One call site, as a retry loop has.
        let retry = || tracing::warn!("opening the watch failed; retrying");
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..5 {
                retry();
            }
            repeats.summarize();
            retry();
            repeats.state_changed();
            retry();
        });
        let text = printed.lock().unwrap().concat();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[1].contains("repeated 4 more times"), "{text}");
        assert!(lines[2].contains("repeated 1 more times"), "{text}");
        assert!(
            lines[3].ends_with("opening the watch failed; retrying"),
            "{text}"
        );
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour(true, None));
        assert!(
            colour(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
        assert!(!colour(false, Some(OsStr::new("1"))));
    }

    #[test]
    fn json_logs_are_noticed_before_clap() {
        let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert!(json_requested(args(&[
            "d",
            "--log-format",
            "json",
            "ls",
            "-o",
            "x"
        ])));
        assert!(json_requested(args(&["d", "ls", "--log-format=json"])));
        assert!(!json_requested(args(&["d", "ls", "--log-format", "text"])));
    }

    struct Writer(Arc<Mutex<Vec<String>>>);

    impl std::io::Write for Writer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(buf).into_owned());
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
