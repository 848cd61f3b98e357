//! `gpu check --workload llama`: a real application's Vulkan code on the machine's Venus device.
//! llama.cpp (Debian's, ggml's Vulkan backend) decodes a fixed prompt greedily in a container
//! twice, on the Venus device and on the CPU backend; the check passes when ggml really used the
//! Venus device for every layer and both runs chose the same tokens.
//!
//! The image and its model come from scripts/llama-root (`image MACHINE` imports it).

pub mod rpc;

use crate::check::sections;
use serde::Serialize;

/// The image scripts/llama-root imports into a machine (and tags latest).
pub const IMAGE: &str = "localhost/carbon-llama:latest";

/// The guest side: `sh -s -- IMAGE`, IMAGE an image in the machine or, starting with `/`, the
/// root directory of one in the guest (a shared folder: run as `--rootfs DIR:O`, so nothing is
/// written there). Only Mesa's Venus ICD is offered to the loader, and ggml is told to take
/// device 0 even where Venus reports a CPU-type host device (lavapipe), which ggml skips by
/// default. The container runs detached and its output is read from its log (nothing is asked
/// of the image but llama-completion). Outputs are hex, so generated text cannot fake a section
/// marker.
const GUEST_SCRIPT: &str = r#"
case $1 in
/*) how=--rootfs image="$1:O" ;;
*) how=--pull=never image=$1 ;;
esac
out=$(mktemp -d)
start() {
    podman run -d --log-driver k8s-file \
        -e VK_DRIVER_FILES=/usr/share/vulkan/icd.d/virtio_icd.json -e GGML_VK_VISIBLE_DEVICES=0 \
        "$how" "$image" llama-completion @COMPLETION@ "$@"
}
@RUN@
for side in vulkan cpu; do
    if [ $side = vulkan ]; then dev="--device Vulkan0 -ngl 999"; else dev="--device none -ngl 0"; fi
    rm -f "$out/text" "$out/log" "$out/podman.log"
    run $dev
    status=$?
    echo "@@$side-status"; echo $status
    echo "@@$side"; od -An -v -tx1 "$out/text" 2>/dev/null | tr -d ' \n'; echo
    echo "@@$side-log"; cat "$out/podman.log" "$out/log" 2>/dev/null | tail -n 400
done
rm -rf "$out"
"#;

/// llama-completion's arguments for the check, on every side: the model of scripts/llama-model.py,
/// a fixed prompt, greedy decoding of 32 tokens, the KV cache in f32 (as exact as the weights),
/// and `-lv 4`, at which llama.cpp logs the device and the layers it offloaded. The device
/// arguments come after them.
pub const COMPLETION: [&str; 16] = [
    "-m",
    "/opt/carbon-llama/tiny.gguf",
    "-p",
    "carbon-vm runs llama.cpp",
    "-n",
    "32",
    "--temp",
    "0",
    "--ignore-eos",
    "--no-warmup",
    "-ctk",
    "f32",
    "-ctv",
    "f32",
    "-lv",
    "4",
];

/// `run ARGS...`: the script's `start ARGS...` (`podman run -d` of one side) to its end, its
/// output in `$out/text` and `$out/log`, podman's own messages in `$out/podman.log`; returns the
/// container's status. A run whose text lacks the blank line llama-completion ends it with is
/// run again, twice at most: its log is written by a thread of its own, which can lose its last
/// writes when the program exits (seen in CI in the guest, and on the host, 1 run in 12, with no
/// container or VM between). Both workloads' scripts have it (`@RUN@`).
const RUN: &str = r#"# Detached, then read from its log: podman's relay of an attached container's stdout can lose its
# end when the container exits.
run() {
    for try in 1 2 3; do
        id=$(start "$@" 2>"$out/podman.log") || return
        status=$(podman wait "$id")
        podman logs "$id" >"$out/text" 2>"$out/log"
        podman rm -f "$id" >/dev/null 2>&1
        case $status in '' | *[!0-9]*) return 1 ;; esac
        [ "$status" = 0 ] || return "$status"
        [ "$(tail -c 2 "$out/text" | od -An -tx1 | tr -d ' \n')" = 0a0a ] && return 0
    done
    # Cut short three times: the texts' comparison shows it.
    return 0
}"#;

/// `script` with [`COMPLETION`] and [`RUN`] in it.
fn with_completion(script: &str) -> String {
    let args = shlex::try_join(COMPLETION).expect("COMPLETION holds no NUL");
    script.replace("@RUN@", RUN).replace("@COMPLETION@", &args)
}

/// The guest side with [`COMPLETION`] in it.
pub fn guest_script() -> String {
    with_completion(GUEST_SCRIPT)
}

/// What the workload showed; `failure` is `None` when it passed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub ok: bool,
    /// The Vulkan device ggml used, e.g. `Virtio-GPU Venus (llvmpipe (LLVM 19.1.7, 256 bits))`.
    pub device: Option<String>,
    /// Layers offloaded to it, of the model's (`3/3`).
    pub layers: Option<String>,
    /// The completion on the Venus device and on the CPU backend.
    pub vulkan_text: String,
    pub cpu_text: String,
    pub failure: Option<String>,
}

/// What to do about a failure.
pub const HINT: &str = "`scripts/llama-root image NAME` imports the llama.cpp image into the \
                        machine; `gpu check NAME` without --workload checks Venus itself";

/// Reads the guest script's output.
pub fn diagnose(output: &str) -> Report {
    let s = sections(output);
    let get = |k: &str| s.get(k).map(String::as_str).unwrap_or("");
    let vulkan_log = get("vulkan-log");
    let device = used_device(vulkan_log);
    let layers = offloaded(vulkan_log);
    let vulkan_text = from_hex(get("vulkan"));
    let cpu_text = from_hex(get("cpu"));
    let failure = failure(&s, device.as_deref(), layers, &vulkan_text, &cpu_text);
    Report {
        ok: failure.is_none(),
        device,
        layers: layers.map(|(n, of)| format!("{n}/{of}")),
        vulkan_text,
        cpu_text,
        failure,
    }
}

fn failure(
    s: &std::collections::HashMap<String, String>,
    device: Option<&str>,
    layers: Option<(u32, u32)>,
    vulkan_text: &str,
    cpu_text: &str,
) -> Option<String> {
    if let Some(f) = failed_side(s, &["vulkan", "cpu"], |_| None) {
        return Some(f);
    }
    let Some(device) = device else {
        return Some("ggml used no Vulkan device: llama.cpp fell back to the CPU".into());
    };
    if !device.starts_with("Virtio-GPU Venus") {
        return Some(format!("ggml used {device}, not the Venus device"));
    }
    match layers {
        Some((n, of)) if n == of && n > 0 => {}
        Some((n, of)) => return Some(format!("only {n} of {of} layers ran on the Venus device")),
        None => return Some("llama.cpp offloaded no layers to the Venus device".into()),
    }
    if vulkan_text.is_empty() || vulkan_text != cpu_text {
        return Some(format!(
            "greedy decoding differs: Venus gave {vulkan_text:?}, the CPU {cpu_text:?}"
        ));
    }
    None
}

/// The first of `sides` whose container failed, said from its log: what `cause` finds in it,
/// else a missing image, else the log's last line that is not a backtrace frame.
fn failed_side(
    s: &std::collections::HashMap<String, String>,
    sides: &[&str],
    cause: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let get = |k: &str| s.get(k).map(String::as_str).unwrap_or("").trim();
    let side = sides
        .iter()
        .find(|side| get(&format!("{side}-status")) != "0")?;
    let log = get(&format!("{side}-log"));
    if let Some(c) = cause(log) {
        return Some(c);
    }
    if let Some(l) = log.lines().find(|l| l.contains("image not known")) {
        return Some(format!("the image is not in the machine ({})", l.trim()));
    }
    let last = log
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.contains("(+0x") && !l.contains(") [0x"))
        .unwrap_or("no output");
    Some(format!(
        "llama.cpp failed on the {side} side: {}",
        last.trim()
    ))
}

/// `using device Vulkan0 (NAME) (...)`: NAME, whose own parentheses nest.
fn used_device(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("using device Vulkan"))?;
    let rest = &line[line.find(" (")? + 2..];
    let mut depth = 1;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 1 => return Some(rest[..i].to_owned()),
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// `offloaded N/M layers to GPU`.
fn offloaded(log: &str) -> Option<(u32, u32)> {
    let line = log
        .lines()
        .find(|l| l.contains("offloaded ") && l.contains("layers to GPU"))?;
    let frac = line.split("offloaded ").nth(1)?.split_whitespace().next()?;
    let (n, of) = frac.split_once('/')?;
    Some((n.parse().ok()?, of.parse().ok()?))
}

/// od's hex back to text (lossy: a random model may emit partial UTF-8).
fn from_hex(hex: &str) -> String {
    let hex = hex.trim();
    let bytes: Vec<u8> = (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as llama.cpp 0.7.0 (ggml 0.27) logs them.
    const VENUS_LOG: &str = "\
0.00.159 I llama_prepare_model_devices: using device Vulkan0 (Virtio-GPU Venus (llvmpipe (LLVM 19.1.7, 256 bits))) (unknown id) - 3891 MiB free
0.00.273 I load_tensors: offloading output layer to GPU
0.00.273 I load_tensors: offloading 1 repeating layers to GPU
0.00.273 I load_tensors: offloaded 3/3 layers to GPU
";
    const CPU_LOG: &str = "warning: no usable GPU found, --gpu-layers option will be ignored\n";

    fn hex(s: &str) -> String {
        s.bytes().map(|b| format!("{b:02x}")).collect()
    }

    fn output(vulkan: &str, vulkan_log: &str, cpu: &str, status: (u8, u8)) -> String {
        format!(
            "@@vulkan-status\n{}\n@@vulkan\n{}\n@@vulkan-log\n{vulkan_log}@@cpu-status\n{}\n@@cpu\n{}\n@@cpu-log\n{CPU_LOG}",
            status.0,
            hex(vulkan),
            status.1,
            hex(cpu)
        )
    }

    #[test]
    fn venus_for_every_layer_and_the_same_tokens_pass() {
        let r = diagnose(&output(
            "carbon-vm runs llama.cpp xy",
            VENUS_LOG,
            "carbon-vm runs llama.cpp xy",
            (0, 0),
        ));
        assert_eq!(r.failure, None);
        assert!(r.ok);
        assert_eq!(
            r.device.as_deref(),
            Some("Virtio-GPU Venus (llvmpipe (LLVM 19.1.7, 256 bits))")
        );
        assert_eq!(r.layers.as_deref(), Some("3/3"));
        assert_eq!(r.vulkan_text, "carbon-vm runs llama.cpp xy");
    }

    #[test]
    fn a_cpu_fallback_another_device_partial_offload_or_other_tokens_fail() {
        let fell_back = diagnose(&output("a", CPU_LOG, "a", (0, 0)));
        assert!(fell_back.failure.unwrap().contains("fell back to the CPU"));
        let lavapipe = VENUS_LOG.replace(
            "Virtio-GPU Venus (llvmpipe (LLVM 19.1.7, 256 bits))",
            "llvmpipe (LLVM 19.1.7, 256 bits)",
        );
        let other = diagnose(&output("a", &lavapipe, "a", (0, 0)));
        assert_eq!(
            other.failure.unwrap(),
            "ggml used llvmpipe (LLVM 19.1.7, 256 bits), not the Venus device"
        );
        let partial = diagnose(&output("a", &VENUS_LOG.replace("3/3", "1/3"), "a", (0, 0)));
        assert!(partial.failure.unwrap().contains("only 1 of 3 layers"));
        let differ = diagnose(&output("ab", VENUS_LOG, "ac", (0, 0)));
        assert!(differ.failure.unwrap().contains("greedy decoding differs"));
    }

    /// `run` (RUN) under sh with stand-ins for `start` and podman whose texts are those of
    /// `texts`, one per try: how many tries it made, its status, the text it kept.
    fn run_with(texts: &[&str]) -> (usize, i32, String) {
        let dir = tempfile::tempdir().unwrap();
        for (i, t) in texts.iter().enumerate() {
            std::fs::write(dir.path().join(format!("text{}", i + 1)), t).unwrap();
        }
        let script = format!(
            r#"out=$1
start() {{ n=$(($(cat "$out/n" 2>/dev/null || echo 0) + 1)); echo $n >"$out/n"; echo id$n; }}
podman() {{
    case $1 in
    wait) echo 0 ;;
    logs) cat "$out/text${{2#id}}" ;;
    esac
}}
{RUN}
run; status=$?
echo "$(cat "$out/n") $status"
cat "$out/text""#
        );
        let o = std::process::Command::new("sh")
            .args(["-c", &script, "sh"])
            .arg(dir.path())
            .output()
            .unwrap();
        let out = String::from_utf8(o.stdout).unwrap();
        let (head, text) = out.split_once('\n').unwrap();
        let (tries, status) = head.split_once(' ').unwrap();
        (tries.parse().unwrap(), status.parse().unwrap(), text.into())
    }

    #[test]
    fn a_run_cut_short_by_llama_completions_log_thread_is_run_again_twice_at_most() {
        assert_eq!(run_with(&["a b\n\n"]), (1, 0, "a b\n\n".into()));
        assert_eq!(run_with(&["a", "a b\n\n"]), (2, 0, "a b\n\n".into()));
        // Cut short every time: the last text is kept, for the comparison to show.
        assert_eq!(
            run_with(&["a", "a", "a b", "a b\n\n"]),
            (3, 0, "a b".into())
        );
    }

    #[test]
    fn the_guest_script_runs_the_completion_on_both_sides() {
        let s = guest_script();
        assert!(!s.contains("@COMPLETION@"));
        // The arguments as the guest's shell reads them back: each one whole.
        let line = s.lines().find(|l| l.contains("llama-completion")).unwrap();
        let words = shlex::split(line.trim().trim_end_matches(r#" "$@""#)).unwrap();
        let at = words.iter().position(|w| w == "llama-completion").unwrap();
        assert_eq!(words[at + 1..], COMPLETION);
    }

    #[test]
    fn a_missing_image_or_a_crash_is_named() {
        let missing = output(
            "",
            "Error: localhost/carbon-llama:latest: image not known\n",
            "",
            (125, 125),
        );
        assert_eq!(
            diagnose(&missing).failure.unwrap(),
            "the image is not in the machine (Error: localhost/carbon-llama:latest: image not known)"
        );
        let crash = diagnose(&output("", "ggml_vulkan: device lost\n", "x", (134, 0)));
        assert_eq!(
            crash.failure.unwrap(),
            "llama.cpp failed on the vulkan side: ggml_vulkan: device lost"
        );
    }
}
