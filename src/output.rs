//! All user output goes through the Printer: records as JSON with --json, human text otherwise,
//! nothing but errors with --quiet, and progress bars only on a terminal.

use guest_image::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use machine::guest_image;
use serde::Serialize;
use std::io::IsTerminal;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub json: bool,
    pub quiet: bool,
}

impl Printer {
    /// Prints a record: as JSON with --json, else through `human`.
    pub fn record<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).expect("records serialize")
            );
        } else if !self.quiet {
            println!("{}", human());
        }
    }

    /// A warning on stderr (never on stdout, which --json keeps for records); --quiet drops it.
    pub fn warn(&self, message: &str) {
        if !self.quiet {
            eprintln!("warning: {message}");
        }
    }

    /// A progress reporter: bars on a terminal, silence otherwise.
    pub fn progress(&self) -> std::sync::Arc<dyn Progress> {
        if self.json || self.quiet || !std::io::stderr().is_terminal() {
            std::sync::Arc::new(guest_image::Silent)
        } else {
            std::sync::Arc::new(Bars::default())
        }
    }
}

#[derive(Default)]
struct Bars {
    current: Mutex<Option<ProgressBar>>,
}

impl Progress for Bars {
    fn begin(&self, step: &str, total: Option<u64>) {
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(
                ProgressStyle::with_template(
                    "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
            ),
        };
        bar.set_message(step.to_owned());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        if let Some(old) = self.current.lock().expect("not poisoned").replace(bar) {
            old.finish_and_clear();
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(b) = self.current.lock().expect("not poisoned").as_ref() {
            b.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(b) = self.current.lock().expect("not poisoned").take() {
            b.finish_and_clear();
        }
    }
}
