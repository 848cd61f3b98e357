//! Shell niceties generated from the clap definitions, so they never drift from the CLI.

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use anyhow::Context;
use clap::CommandFactory;
use std::io::Write;

pub fn completions(a: CompletionsArgs) -> anyhow::Result<()> {
    // Rendered first: clap_complete panics on a failed write, and `... | head` closes the pipe.
    let mut script = Vec::new();
    clap_complete::generate(a.shell, &mut Cli::command(), "carbon-vm", &mut script);
    if a.shell == clap_complete::Shell::Bash {
        // clap_complete 4.6 spells the hyphenated binary name two ways in bash (`carbon__vm` where
        // it tracks the subcommand typed, `carbon__subcmd__vm` in the cases that list each
        // subcommand's flags), so no subcommand's flags would complete. One spelling mends it.
        let fixed = String::from_utf8_lossy(&script).replace("carbon__subcmd__vm", "carbon__vm");
        script = fixed.into_bytes();
    }
    print(&script)
}

pub fn man(a: ManArgs, out: crate::output::Printer) -> anyhow::Result<()> {
    let cmd = Cli::command();
    match a.dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd).render(&mut page)?;
            print(&page)
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            let record = serde_json::json!({ "dir": dir });
            out.record(&record, || {
                format!("man pages written to {}", dir.display())
            });
            Ok(())
        }
    }
}

/// Writes to stdout; a reader that stopped early (a closed pipe) is not an error.
fn print(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}
