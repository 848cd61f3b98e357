//! `gpu check --workload llama-rpc`: llama.cpp in a container through the ggml device
//! (carbon-vm.dev/ggml=all, `create --ggml`), every layer on ggml's RPC backend, i.e. on the host's
//! own ggml backend; and the same decoding on the container's CPU backend. The check passes when
//! every layer ran on the RPC device and both chose the same tokens.

use super::{from_hex, offloaded};
use crate::check::sections;
use serde::Serialize;

/// The CDI device that gives a container the host's ggml server.
pub const DEVICE: &str = "carbon-vm.dev/ggml=all";

/// The guest side: `sh -s -- IMAGE` as for the Venus workload. The RPC side names only ggml's
/// RPC device (the device's LLAMA_ARG_RPC adds it; a GPU machine's containers also see Venus,
/// which must not take layers); the CPU side runs without the device. The image's ggml RPC
/// package version is asked for, to name it if the protocols differ. The container runs
/// detached and its output is read from its log, as in the Venus workload.
const GUEST_SCRIPT: &str = r#"
case $1 in
/*) how=--rootfs image="$1:O" ;;
*) how=--pull=never image=$1 ;;
esac
out=$(mktemp -d)
# $1: the side's podman options (the device, or none); the rest: llama-completion's device.
start() {
    opts=$1
    shift
    podman run -d --log-driver k8s-file $opts "$how" "$image" llama-completion @COMPLETION@ "$@"
}
@RUN@
for side in rpc cpu; do
    rm -f "$out/text" "$out/log" "$out/podman.log"
    if [ $side = rpc ]; then
        run "--device @DEVICE@" --device RPC0 -ngl 999
    else
        run "" --device none -ngl 0
    fi
    status=$?
    echo "@@$side-status"; echo $status
    echo "@@$side"; od -An -v -tx1 "$out/text" 2>/dev/null | tr -d ' \n'; echo
    echo "@@$side-log"; cat "$out/podman.log" "$out/log" 2>/dev/null | tail -n 400
done
echo "@@image-ggml"
podman run --rm "$how" "$image" dpkg-query -W -f '${Version}' libggml0-backend-rpc 2>/dev/null |
    od -An -v -tx1 | tr -d ' \n'
echo
rm -rf "$out"
"#;

/// The guest side with [`COMPLETION`] and the device in it.
pub fn guest_script() -> String {
    super::with_completion(GUEST_SCRIPT).replace("@DEVICE@", DEVICE)
}

/// What the workload showed; `failure` is `None` when it passed.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub ok: bool,
    /// The RPC device ggml used, e.g. `RPC0 (127.0.0.1:50052)`.
    pub device: Option<String>,
    /// Layers offloaded to it, of the model's (`3/3`).
    pub layers: Option<String>,
    /// The completion through the device and on the container's CPU backend.
    pub rpc_text: String,
    pub cpu_text: String,
    /// The image's ggml RPC backend (its Debian package version), where it says.
    pub image_ggml: Option<String>,
    pub failure: Option<String>,
}

/// What to do about a failure.
pub const HINT: &str = "the machine needs the ggml device (`carbon-vm create --ggml`) and a \
                        running server (`carbon-vm inspect NAME` shows it, ggml.log says more); \
                        `scripts/llama-root image NAME` imports the llama.cpp image";

/// Reads the guest script's output; `server_version` is the protocol version the host's server
/// announced (`inspect`), to name beside the image's when they differ.
pub fn diagnose(output: &str, server_version: Option<&str>) -> Report {
    let s = sections(output);
    let get = |k: &str| s.get(k).map(String::as_str).unwrap_or("");
    let log = get("rpc-log");
    let device = used_device(log);
    let layers = offloaded(log);
    let rpc_text = from_hex(get("rpc"));
    let cpu_text = from_hex(get("cpu"));
    let image_ggml = Some(from_hex(get("image-ggml")))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let failure = failure(&s, device.as_deref(), layers, &rpc_text, &cpu_text)
        .map(|f| explain_version(f, log, image_ggml.as_deref(), server_version));
    Report {
        ok: failure.is_none(),
        device,
        layers: layers.map(|(n, of)| format!("{n}/{of}")),
        rpc_text,
        cpu_text,
        image_ggml,
        failure,
    }
}

fn failure(
    s: &std::collections::HashMap<String, String>,
    device: Option<&str>,
    layers: Option<(u32, u32)>,
    rpc_text: &str,
    cpu_text: &str,
) -> Option<String> {
    let no_device = |log: &str| {
        let l = log
            .lines()
            .find(|l| l.contains("unresolvable CDI devices"))?;
        Some(format!(
            "the machine has no ggml device (was it created with --ggml?): {}",
            l.trim()
        ))
    };
    if let Some(f) = super::failed_side(s, &["rpc", "cpu"], no_device) {
        return Some(f);
    }
    let Some(device) = device else {
        return Some("ggml used no RPC device: llama.cpp did not reach the ggml server".into());
    };
    match layers {
        Some((n, of)) if n == of && n > 0 => {}
        Some((n, of)) => return Some(format!("only {n} of {of} layers ran on {device}")),
        None => return Some(format!("llama.cpp offloaded no layers to {device}")),
    }
    if rpc_text.is_empty() || rpc_text != cpu_text {
        return Some(format!(
            "greedy decoding differs: the ggml device gave {rpc_text:?}, the CPU {cpu_text:?}"
        ));
    }
    None
}

/// ggml's client says `RPC server version mismatch: 3.0.0` when the server speaks another
/// protocol; that failure is said with both sides' versions and what to do.
fn explain_version(
    failure: String,
    log: &str,
    image_ggml: Option<&str>,
    server_version: Option<&str>,
) -> String {
    let Some(theirs) = log
        .lines()
        .find_map(|l| l.split("RPC server version mismatch: ").nth(1))
    else {
        return failure;
    };
    let server = server_version.unwrap_or(theirs.trim());
    let image = image_ggml.map_or_else(
        || "the image's ggml".to_owned(),
        |v| format!("the image's ggml ({v})"),
    );
    format!(
        "ggml's RPC protocol differs: the host's server speaks {server}, which {image} does not \
         speak; use an image whose ggml is of the server's release, or point CARBON_VM_GGML_SERVER \
         at a ggml-rpc-server of the image's release and start the machine again"
    )
}

/// `using device RPC0 (127.0.0.1:50052) (unknown id)`: `RPC0 (127.0.0.1:50052)`.
fn used_device(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("using device RPC"))?;
    let rest = &line[line.find("using device ")? + "using device ".len()..];
    let end = rest.find(") ").map_or(rest.len(), |i| i + 1);
    Some(rest[..end].trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines as llama.cpp 0.7.0 (ggml 0.27) logs them.
    const RPC_LOG: &str = "\
0.00.275 I llama_prepare_model_devices: using device RPC0 (127.0.0.1:50052) (unknown id) - 24105 MiB free
0.00.374 I load_tensors: offloaded 3/3 layers to GPU
";

    fn hex(s: &str) -> String {
        s.bytes().map(|b| format!("{b:02x}")).collect()
    }

    fn output(rpc: &str, rpc_log: &str, cpu: &str, status: (u8, u8)) -> String {
        format!(
            "@@rpc-status\n{}\n@@rpc\n{}\n@@rpc-log\n{rpc_log}@@cpu-status\n{}\n@@cpu\n{}\n@@cpu-log\n\n@@image-ggml\n{}\n",
            status.0,
            hex(rpc),
            status.1,
            hex(cpu),
            hex("0.27.0-1")
        )
    }

    #[test]
    fn every_layer_on_the_rpc_device_and_the_same_tokens_pass() {
        let r = diagnose(&output("a b", RPC_LOG, "a b", (0, 0)), Some("8.0.0"));
        assert_eq!(r.failure, None);
        assert_eq!(r.device.as_deref(), Some("RPC0 (127.0.0.1:50052)"));
        assert_eq!(r.layers.as_deref(), Some("3/3"));
        assert_eq!(r.image_ggml.as_deref(), Some("0.27.0-1"));
    }

    #[test]
    fn no_rpc_device_a_partial_offload_or_other_tokens_fail() {
        let none = diagnose(&output("a", "", "a", (0, 0)), None);
        assert!(none.failure.unwrap().contains("no RPC device"));
        let partial = diagnose(
            &output("a", &RPC_LOG.replace("3/3", "2/3"), "a", (0, 0)),
            None,
        );
        assert!(partial.failure.unwrap().contains("only 2 of 3 layers"));
        let differ = diagnose(&output("ab", RPC_LOG, "ac", (0, 0)), None);
        assert!(differ.failure.unwrap().contains("greedy decoding differs"));
    }

    #[test]
    fn a_protocol_mismatch_names_both_versions_and_the_remedy() {
        let log = "RPC server version mismatch: 99.0.0\n\
                   /usr/lib/x86_64-linux-gnu/libggml-base.so.0(+0x1234) [0x7f00]\n";
        let r = diagnose(&output("", log, "a", (134, 0)), Some("99.0.0"));
        let f = r.failure.unwrap();
        assert!(f.contains("speaks 99.0.0"), "{f}");
        assert!(f.contains("the image's ggml (0.27.0-1)"), "{f}");
        assert!(f.contains("CARBON_VM_GGML_SERVER"), "{f}");
    }

    #[test]
    fn a_machine_without_the_device_is_named() {
        let log =
            "Error: setting up CDI devices: unresolvable CDI devices carbon-vm.dev/ggml=all\n";
        let r = diagnose(&output("", log, "a", (125, 0)), None);
        assert!(r.failure.unwrap().contains("created with --ggml"));
    }

    #[test]
    fn the_guest_script_asks_for_the_device_and_only_the_rpc_device() {
        let s = guest_script();
        assert!(!s.contains("@COMPLETION@") && !s.contains("@DEVICE@"));
        assert!(s.contains("--device carbon-vm.dev/ggml=all"));
        assert!(s.contains("--device RPC0 -ngl 999"));
    }
}
