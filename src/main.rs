//! carbon-vm: GPU-accelerated (virtio-gpu Venus) Podman machines from the command line.

mod cli;
mod commands;
mod env_vars;
mod exit;
mod home;
mod output;
mod settings;

use clap::Parser;
use cli::{Cli, Command, GpuCommand};
use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == machine::ggml::SERVE_COMMAND)
    {
        return ggml_serve();
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env(env_vars::LOG)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // No colour codes in logs redirected to a file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let out = output::Printer {
        json: cli.json,
        quiet: cli.quiet,
    };
    match run(cli.command, out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let (code, hint) = exit::classify(&e);
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if let Some(h) = hint {
                eprintln!("hint: {h}");
            }
            // A build a signal stopped, once clean, ends as that signal would have ended it.
            if let Some(i) = e
                .chain()
                .find_map(|c| c.downcast_ref::<machine::guest_image::interrupt::Interrupted>())
            {
                let _ = signal_hook::low_level::emulate_default_handler(i.0);
            }
            ExitCode::from(code)
        }
    }
}

/// `carbon-vm ggml-serve ...` (cli::GgmlServeArgs): runs until the machine's VMM ends; its
/// messages go to its stderr, the machine's ggml.log.
fn ggml_serve() -> ExitCode {
    let a = match cli::GgmlServeArgs::try_parse_from(std::env::args_os().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(exit::USAGE);
        }
    };
    let served = machine::ggml::serve(machine::ggml::Serve {
        socket: a.socket,
        state: a.state,
        vmm_pid: a.vmm_pid,
        server: a.server,
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if let Some(cause) = std::error::Error::source(&e) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(exit::FAILURE)
        }
    }
}

fn run(command: Command, out: output::Printer) -> anyhow::Result<()> {
    // Neither needs (or should create) carbon-vm's directories.
    match command {
        Command::Completions(a) => return commands::shell::completions(a),
        Command::Man(a) => return commands::shell::man(a, out),
        _ => {}
    }
    let home = home::Home::from_env()?;
    match command {
        Command::Image(c) => commands::image::run(c, &home, out),
        Command::Create(a) => commands::machine::create_cmd(a, &home, out),
        Command::Start(a) => commands::machine::start(a, &home, out),
        Command::Stop(a) => commands::machine::stop(a, &home, out),
        Command::Set(a) => commands::machine::set(a, &home, out),
        Command::Rm(a) => commands::machine::rm(a, &home, out),
        Command::List => commands::machine::list(&home, out),
        Command::Inspect(a) => commands::machine::inspect(a, &home, out),
        Command::Ssh(a) => commands::machine::ssh(a, &home),
        Command::Env(a) => commands::machine::env(a, &home, out),
        Command::Gpu(GpuCommand::Check(a)) => commands::machine::gpu_check(a, &home, out),
        Command::Doctor => commands::doctor::run(&home, out),
        Command::Completions(_) | Command::Man(_) => unreachable!("handled above"),
    }
}
