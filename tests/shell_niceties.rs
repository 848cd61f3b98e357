//! Completions and man pages come from the clap definitions: the scripts parse in their shells,
//! bash completes real subcommands and flags, and the man pages render with every command's flags.

use assert_cmd::Command;

fn carbon_vm(args: &[&str]) -> Vec<u8> {
    Command::cargo_bin("carbon-vm")
        .unwrap()
        .args(args)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone()
}

#[test]
fn bash_completion_completes_subcommands_and_flags() {
    let script = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(script.path(), carbon_vm(&["completions", "bash"])).unwrap();
    // Source it and ask the function it registered what follows the words typed so far.
    let complete = |words: &str| {
        let probe = format!(
            "source {}; fn=$(complete -p carbon-vm | sed -E 's/.*-F ([^ ]+).*/\\1/'); \
             COMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); \
             \"$fn\" carbon-vm \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.path().display()
        );
        let o = std::process::Command::new("bash")
            .args(["-c", &probe])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(complete("carbon-vm cr").trim(), "create");
    assert_eq!(complete("carbon-vm create --di").trim(), "--disk-size");
    assert!(complete("carbon-vm s").lines().any(|l| l == "set"));
    assert_eq!(complete("carbon-vm image pull --sh").trim(), "--sha256");
}

#[test]
fn zsh_and_fish_scripts_parse_and_name_every_subcommand() {
    for (shell, check) in [("zsh", &["-n"][..]), ("fish", &["--no-execute"])] {
        let script = carbon_vm(&["completions", shell]);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &script).unwrap();
        let o = std::process::Command::new(shell)
            .args(check)
            .arg(file.path())
            .output()
            .unwrap_or_else(|e| panic!("{shell} (scripts/install-deps installs it): {e}"));
        assert!(
            o.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let script = String::from_utf8(script).unwrap();
        for sub in [
            "create",
            "start",
            "stop",
            "set",
            "gpu",
            "completions",
            "man",
        ] {
            assert!(script.contains(sub), "{shell} lacks {sub}");
        }
    }
    let o = Command::cargo_bin("carbon-vm")
        .unwrap()
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn man_pages_render_for_every_command() {
    let page = carbon_vm(&["man"]);
    assert!(page.starts_with(b".ie"), "roff");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    carbon_vm(&["-q", "man", "--dir", out.to_str().unwrap()]);
    for (page, flag) in [
        ("carbon-vm.1", "--json"),
        ("carbon-vm-create.1", "--disk-size"),
        ("carbon-vm-set.1", "--memory"),
        ("carbon-vm-image-pull.1", "--sha256"),
        ("carbon-vm-gpu-check.1", "NAME"),
    ] {
        // col -b drops the overstrike bold that man prints off a terminal.
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg("man -l \"$1\" | col -b")
            .arg("sh")
            .arg(out.join(page))
            .env("MANWIDTH", "100")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{page}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains(flag), "{page} lacks {flag}:\n{text}");
    }
}
